"""Hostile inputs for kdfast.etd (importance, extract, select_units, MaskedProxyLoss) and the
backend rule of the importance and BiLSTM op families.

Bad arguments raise ValueError/TypeError naming the argument before the model runs; a NaN/inf
score (a diverged scoring run) is never ranked; NaN in gives NaN out.
"""
import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

import kdfast.etd as etd
from kdfast import _ext
from kdfast.etd import _bert
from kdfast.ops import _backend
from kdfast.ops import bilstm as bilstm_ops
from kdfast.ops import importance as importance_ops
from kdfast.ops.importance import unit_taylor
from kdfast.etd.headmask import importance_reference

from test_etd import make_batches, tiny_config

SIZES = dict(num_layers=2, hidden_size=12, num_heads=2, intermediate_size=16)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return BertModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


@pytest.fixture(scope="module")
def scores(teacher):
    return etd.importance(teacher, make_batches(2))


def _copy(imp):
    return etd.Importance(**{k: v.clone() if isinstance(v, torch.Tensor) else v
                             for k, v in imp.to_dict().items()})


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------ importance: batches

def test_single_dict_is_one_batch(teacher):
    b = make_batches(1)[0]
    one = etd.importance(teacher, b)
    listed = etd.importance(teacher, [b])
    assert one.num_batches == 1 and one.num_sentences == 4
    for k in ("heads", "ffn", "hidden", "attn"):
        torch.testing.assert_close(getattr(one, k), getattr(listed, k))
    ref = importance_reference(teacher, b)
    torch.testing.assert_close(ref.heads, one.heads, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batches", [None, 3, "input_ids", torch.ones(2, 3, dtype=torch.long)],
                         ids=["None", "int", "str", "tensor"])
def test_batches_must_be_an_iterable_of_mappings(teacher, batches):
    with pytest.raises(TypeError, match="batches must be an iterable of mappings"):
        etd.importance(teacher, batches)
    assert _hooks(teacher) == 0


def _bad_batches():
    b = make_batches(1)[0]
    ids = b["input_ids"]
    return [
        ("tensor rows", [ids], TypeError, "each batch must be a mapping"),
        ("no input_ids", [{"attention_mask": b["attention_mask"]}], TypeError, "'input_ids'"),
        ("ids > vocab", [dict(b, input_ids=ids + 97)], ValueError,
         r"batch\['input_ids'\] must lie in \[0, vocab_size=97\)"),
        ("ids < 0", [dict(b, input_ids=ids - 100)], ValueError, "must lie in"),
        ("B=0", [{k: v[:0] for k, v in b.items()}], ValueError, "every size >= 1"),
        ("L=0", [{k: v[:, :0] for k, v in b.items()}], ValueError, "every size >= 1"),
        ("1-D ids", [{"input_ids": ids[0]}], ValueError, r"must have shape \[B, L\]"),
        ("float ids", [{"input_ids": ids.float()}], TypeError, "dtype torch.int64"),
        ("uint8 ids", [{"input_ids": ids.to(torch.uint8)}], TypeError,
         r"batch\['input_ids'\] must have dtype torch.int64"),
        ("choices for a model without", [{"input_ids": ids[:, None].expand(-1, 2, -1)}],
         ValueError, r"must have shape \[B, L\]"),
        ("ids list", [{"input_ids": ids.tolist()}], TypeError, "must be a torch.Tensor"),
        ("L > max_position", [{"input_ids": torch.ones(2, 41, dtype=torch.long)}], ValueError,
         "max_position_embeddings=40"),
        ("mask shape", [dict(b, attention_mask=b["attention_mask"][:, :3])], ValueError,
         r"batch\['attention_mask'\] must have the shape of input_ids"),
        ("token type", [dict(b, token_type_ids=b["token_type_ids"] + 2)], ValueError,
         "type_vocab_size=2"),
        ("position ids", [dict(b, position_ids=torch.arange(9)[None] + 40)], ValueError,
         "max_position_embeddings=40"),
    ]


@pytest.mark.parametrize("case", _bad_batches(), ids=lambda c: c[0])
@pytest.mark.parametrize("scorer", ["fast", "reference"])
def test_bad_batches_raise_before_the_model_runs(teacher, case, scorer):
    _, batches, exc, match = case
    calls = []
    handle = teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(exc, match=match):
            (etd.importance if scorer == "fast" else importance_reference)(teacher, batches)
    finally:
        handle.remove()
    assert calls == [] and _hooks(teacher) == 0
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())


def test_bad_labels_for_the_task_loss(classifier):
    b = make_batches(1, labels="cls")[0]
    with pytest.raises(ValueError, match=r"batch\['labels'\] must lie in \[0, num_labels=3\)"):
        etd.importance(classifier, [dict(b, labels=torch.tensor([5, 0, 0, 0]))])
    with pytest.raises(ValueError, match=r"one row per input row \(B=4\)"):
        etd.importance(classifier, [dict(b, labels=torch.tensor([1, 0]))])
    ok = etd.importance(classifier, [dict(b, labels=torch.tensor([-100, 0, 2, 1]))])
    assert torch.isfinite(ok.heads).all()


def test_bool_and_float_attention_masks_score_like_int_masks(teacher):
    b = make_batches(1)[0]
    want = etd.importance(teacher, b)
    for mask in (b["attention_mask"].bool(), b["attention_mask"].float()):
        got = etd.importance(teacher, dict(b, attention_mask=mask))
        torch.testing.assert_close(got.heads, want.heads)


@pytest.mark.parametrize("kw,exc,match", [
    ({"num_batches": 0}, ValueError, "num_batches must be a positive int"),
    ({"num_batches": 1.5}, ValueError, "num_batches must be a positive int"),
    ({"backend": "gpu"}, ValueError, "backend must be one of"),
    ({"backend": "triton"}, ValueError, "no 'triton' backend"),
    ({"heads": "no"}, TypeError, "heads must be a bool"),
    ({"unpad": 1}, TypeError, "unpad must be a bool"),
    ({"heads": False, "ffn": False, "hidden": False}, ValueError, "at least one of"),
    ({"loss_fn": 3}, TypeError, "loss_fn must be None, a callable"),
    ({"unpad_overhead_tokens": -1}, ValueError, "unpad_overhead_tokens must be"),
])
def test_bad_importance_arguments(teacher, kw, exc, match):
    with pytest.raises(exc, match=match):
        etd.importance(teacher, make_batches(1), **kw)
    assert _hooks(teacher) == 0 and not teacher.training


def test_nan_loss_gives_nan_scores_and_extract_refuses_them(teacher):
    nan_loss = lambda out, batch: out.last_hidden_state.sum() * float("nan")  # noqa: E731
    imp = etd.importance(teacher, make_batches(1), loss_fn=nan_loss)
    assert torch.isnan(imp.heads_raw).all()
    with pytest.raises(ValueError, match="importance.heads has 12 non-finite"):
        etd.extract(teacher, importance=imp, **SIZES)


def test_masked_proxy_loss_arguments(teacher):
    for bad in (0, -0.1, 1.5, float("nan"), "a", True):
        with pytest.raises(ValueError, match="mask_prob must be a number in"):
            etd.MaskedProxyLoss(bad)
    with pytest.raises(ValueError, match="mask_token_id must be a token id"):
        etd.MaskedProxyLoss(mask_token_id=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        etd.MaskedProxyLoss(seed=None)
    with pytest.raises(ValueError, match=r"mask_token_id=500 is not in the model's vocabulary"):
        etd.importance(teacher, make_batches(1), loss_fn=etd.MaskedProxyLoss(mask_token_id=500))


def test_grouped_rows_reuse_the_known_lengths(teacher, monkeypatch):
    """select_rows gets each group's longest row from _grouped_loss instead of re-reading the
    attention mask (a host sync per group on a GPU): row_lengths runs once per batch."""
    calls = []
    real = _bert.row_lengths
    monkeypatch.setattr(_bert, "row_lengths", lambda b: calls.append(1) or real(b))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 97, (6, 20), generator=g)
    lengths = torch.tensor([20, 3, 17, 2, 9, 20])
    mask = (torch.arange(20)[None, :] < lengths[:, None]).long()
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    got = etd.importance(teacher, [batch], unpad_overhead_tokens=0)
    assert len(calls) == 1
    want = etd.importance(teacher, [batch], unpad=False)
    torch.testing.assert_close(got.heads, want.heads, rtol=1e-4, atol=1e-6)
    sel = _bert.select_rows(batch, [1, 3], 3)
    assert sel["input_ids"].shape == (2, 3)
    assert _bert.select_rows(batch, [1, 3])["input_ids"].shape == (2, 3)


# ------------------------------------------------------------------ extract / select_units

@pytest.mark.parametrize("name,index", [("heads", (1, 2)), ("ffn", (0, 3)), ("hidden", (5,))])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_raise_naming_the_component(teacher, scores, name, index, value):
    bad = _copy(scores)
    getattr(bad, name)[index] = value
    with pytest.raises(ValueError, match=rf"importance\.{name} has 1 non-finite score"):
        etd.extract(teacher, importance=bad, **SIZES)


def test_non_finite_attn_scores_raise_when_dims_are_ranked(teacher, scores):
    bad = _copy(scores)
    bad.attn[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"importance\.attn has 1 non-finite"):
        etd.extract(teacher, importance=bad, **dict(SIZES, hidden_size=8, num_heads=2))
    etd.extract(teacher, importance=bad, **SIZES)  # whole heads: attn is not read


@pytest.mark.parametrize("selection", [[0.9, 1.7], [1, 1], [1, 3], [-1, 1], [False, True], [2, 0],
                                       [0], [0, 1, 2], 2, "middle", None, [0, "1"],
                                       torch.tensor([0.0, 2.0])],
                         ids=str)
def test_bad_layer_selection(teacher, scores, selection):
    with pytest.raises(ValueError, match="layer_selection must be"):
        etd.extract(teacher, importance=scores, layer_selection=selection, **SIZES)


def test_layer_selection_accepts_int_likes(teacher, scores):
    import numpy as np

    for selection in ([0, 2], (0, 2), torch.tensor([0, 2]), np.array([0, 2])):
        s = etd.extract(teacher, importance=scores, layer_selection=selection, **SIZES)
        assert s.config.etd["teacher_layers"] == [0, 2]


def test_seed_none_draws_a_recorded_seed(teacher):
    a = etd.extract(teacher, strategy="rand", seed=None, **SIZES)
    seed = a.config.etd["seed"]
    assert isinstance(seed, int)
    b = etd.extract(teacher, strategy="rand", seed=seed, **SIZES)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    for bad in (1.5, "1", True):
        with pytest.raises(TypeError, match="seed must be an int or None"):
            etd.extract(teacher, strategy="rand", seed=bad, **SIZES)
    for bad in (2**64, -2**63 - 1):
        with pytest.raises(ValueError, match=r"seed must lie in"):
            etd.extract(teacher, strategy="rand", seed=bad, **SIZES)


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("value,exc,match", [
    (0, ValueError, "must be >= 1"), (-1, ValueError, "must be >= 1"),
    (1000, ValueError, "larger than the teacher"), (2.0, TypeError, "must be an int"),
    (None, TypeError, "must be an int")])
def test_bad_sizes_name_the_argument(teacher, scores, name, value, exc, match):
    with pytest.raises(exc, match=f"{name}.*{match}|{match}.*{name}" if exc is ValueError
                       else f"{name} {match}"):
        etd.extract(teacher, importance=scores, **dict(SIZES, **{name: value}))


def test_other_bad_extract_arguments(teacher, scores):
    with pytest.raises(ValueError, match="hidden_size=13 is not a multiple of num_heads=2"):
        etd.extract(teacher, importance=scores, **dict(SIZES, hidden_size=13))
    for strategy in ("best", ["impt"], None):
        with pytest.raises(ValueError, match="strategy must be one of"):
            etd.extract(teacher, importance=scores, strategy=strategy, **SIZES)
    with pytest.raises(ValueError, match="needs importance="):
        etd.extract(teacher, **SIZES)
    with pytest.raises(ValueError, match="importance.heads must be a tensor"):
        etd.extract(teacher, importance=scores.to_dict(), **SIZES)
    with pytest.raises(ValueError, match="importance.heads must be a tensor"):
        etd.extract(teacher, importance=etd.Importance(heads=scores.heads.tolist(),
                                                       ffn=scores.ffn, hidden=scores.hidden),
                    **SIZES)
    with pytest.raises(TypeError, match="BertModel or a BertFor"):
        etd.extract(torch.nn.Linear(2, 2), importance=scores, **SIZES)
    with pytest.raises(TypeError, match="config must be the teacher's BertConfig"):
        etd.select_units({}, **SIZES)


# ------------------------------------------------------------------ the backend rule

def test_forced_triton_uses_the_families_own_order(monkeypatch):
    """KDFAST_BACKEND=triton: neither family has Triton, so both take their auto pick (the C++
    kernel where built), never a silent switch to the reference; explicit triton raises."""
    cpu = torch.device("cpu")
    want = "cpu" if _ext.has("cpu") else "reference"
    monkeypatch.setenv("KDFAST_BACKEND", "triton")
    assert importance_ops.resolve("auto", cpu) == want
    assert _backend.resolve("auto", cpu, bilstm_ops._PREFERENCE, family="bilstm") == want
    with pytest.raises(ValueError, match="no 'triton' backend"):
        unit_taylor(torch.ones(2, 3), torch.ones(2, 3), backend="triton")
    with pytest.raises(ValueError, match="no 'triton' backend"):
        bilstm_ops.bilstm(torch.ones(1, 2, 3), [torch.ones(8, 3), torch.ones(8, 2)] * 2,
                          bias=False, backend="triton")
    monkeypatch.setenv("KDFAST_BACKEND", "reference")
    assert importance_ops.resolve("auto", cpu) == "reference"
