"""The etd recipe: extraction (impt / rand / none) then TinyBERT- or MiniLM-style distillation,
task-specific and task-agnostic, on a tiny random BERT with synthetic data."""
import _tiny
import pytest
import torch

from kdfast.distill import etd
from kdfast.distill.etd import extract_student, init_projection
from kdfast.distill.objectives import TinyBERTLoss
from kdfast.models import TeacherTaps, TransformerStudent

SIZES = dict(num_layers=2, hidden_size=8, num_heads=2, intermediate_size=16)
FAST = dict(batch_size=8, lr=2e-3, progress=False, log_every=1, importance_batches=2,
            importance_batch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _teacher(tok, seed=0):
    from transformers import BertConfig, BertModel

    from kdfast.models import TeacherClassifier

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=4,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    t = TeacherClassifier(BertModel(cfg), 2, pooling="mean")
    with torch.no_grad():
        t.head.weight.mul_(30)  # confident teacher logits: a prediction loss with room to drop
    t.has_trained_head = True
    return t


def _dropping(history):
    v = [x for _, x in history]
    return sum(v[-3:]) / 3 < sum(v[:3]) / 3


def test_etd_impt_task_specific_tinybert_style(tmp_path):
    from transformers import BertForSequenceClassification

    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    st, res = etd(teacher, _tiny.task(32), tmp_path / "o", tokenizer=tok, strategy="impt",
                  n_a=1, k=3, step1=dict(max_steps=15), step2=dict(max_steps=6), **SIZES, **FAST)
    r = res["results"]
    assert _dropping(r["step1"]["loss_history"]) and _dropping(r["step2"]["loss_history"])
    etd_cfg = st.model.config.etd
    assert etd_cfg["strategy"] == "impt" and etd_cfg["teacher_layers"] == [1, 3]
    assert (tmp_path / "o" / "importance.pt").is_file()
    plain = BertForSequenceClassification.from_pretrained(str(tmp_path / "o" / "step2" / "student"))
    assert plain.config.num_hidden_layers == 2 and plain.config.hidden_size == 8


def test_depth_only_students_run_half_the_default_schedule(tmp_path, monkeypatch):
    from kdfast.distill.etd import DEPTH_ONLY_SCHEDULE
    from kdfast.distill.tinybert import STEP1_TRAIN, STEP2_TRAIN

    monkeypatch.setitem(STEP1_TRAIN, "min_steps", 6)  # floors below the epochs'
    monkeypatch.setitem(STEP2_TRAIN, "min_steps", 10)
    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    run = dict(tokenizer=tok, n_a=1, k=3, **dict(FAST, batch_size=16))
    steps = {}
    for name, strategy, hidden in (("depth", "impt", 16), ("narrow", "impt", 8),
                                   ("random", "none", 16)):
        _, res = etd(teacher, _tiny.task(32), None, strategy=strategy,
                     **dict(SIZES, hidden_size=hidden, num_heads=2, intermediate_size=32), **run)
        r = res["results"]
        steps[name] = (r["schedule"], r["step1"]["steps"], r["step2"]["steps"])
    # 32 sentences = 2 batches: 4 and 8 epochs of them, halved for the teacher's width only
    assert steps["narrow"] == steps["random"] == (1.0, 8, 16)
    assert steps["depth"] == (DEPTH_ONLY_SCHEDULE, 4, 8)


def test_etd_task_agnostic_minilm_style(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    texts = _tiny.sentences(48)[0]
    st, res = etd(teacher.encoder, None, tmp_path / "o", tokenizer=tok, strategy="rand",
                  style="minilm", task_specific=False, unlabelled=texts, max_steps=12,
                  **dict(SIZES, hidden_size=16), **FAST)
    assert res["results"]["steps"] == 12
    assert set(TinyBERTLoss(st, teacher.encoder.config, style="minilm").att_map) == {3}
    assert all(torch.isfinite(torch.tensor(v)) for _, v in res["results"]["loss_history"])


def test_extracted_student_starts_closer_than_random_init(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok).eval()
    from kdfast.data.tokenize import collate, encode

    texts, labels = _tiny.sentences(16)
    ex = encode(tok, texts, None, labels, max_len=32, student=False)
    batch = collate(ex)
    with torch.no_grad():
        t_out = TeacherTaps(teacher).taps(batch)
    losses = {}
    for strategy in ("impt", "rand", "none"):
        model, imp = extract_student(teacher, ex, strategy=strategy, batch_size=8, **SIZES)
        assert (imp is not None) == (strategy == "impt")
        st = TransformerStudent(model, 16)
        if strategy != "none":
            init_projection(st, model.config.etd["hidden"])
        for m in st.modules():  # compare without dropout noise
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        st.train()
        fn = TinyBERTLoss(st, teacher.encoder.config)
        with torch.no_grad():
            losses[strategy] = float(fn(st.forward_batch(batch), batch, t_out))
    assert losses["impt"] < losses["none"] and losses["rand"] < losses["none"], losses


def test_init_projection_is_the_selection_matrix(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    model, _ = extract_student(teacher, strategy="rand", seed=3, **SIZES)
    st = TransformerStudent(model, 16)
    idx = model.config.etd["hidden"]
    init_projection(st, idx)
    x = torch.randn(3, 8)
    torch.testing.assert_close(st.fit_dense(x)[:, idx], x)
    assert float(st.fit_dense(x).detach().abs().sum()) == pytest.approx(float(x.abs().sum()))


def test_etd_to_a_depth_that_does_not_divide_the_teachers(tmp_path):
    # 4 teacher layers -> 3: the losses map to the layers the extraction kept (1, 3, 4)
    tok = _tiny.tokenizer(tmp_path)
    st, res = etd(_teacher(tok), _tiny.task(8), None, tokenizer=tok, strategy="rand",
                  **dict(SIZES, num_layers=3), max_steps=1, **FAST)
    assert st.model.config.etd["teacher_layers"] == [0, 2, 3]
    assert res["results"]["step2"]["steps"] == 1


def test_etd_bad_inputs(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    with pytest.raises(ValueError, match="strategy"):
        extract_student(teacher, strategy="best", **SIZES)
    with pytest.raises(ValueError, match="examples"):
        extract_student(teacher, strategy="impt", **SIZES)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        extract_student(teacher, strategy="rand", **dict(SIZES, hidden_size=9))
    with pytest.raises(ValueError, match="unlabelled"):
        etd(teacher.encoder, None, None, tokenizer=tok, task_specific=False, strategy="rand",
            **SIZES)
