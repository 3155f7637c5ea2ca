"""TinyBERT recipe (both stages), exact-mode loss vs a hand computation of the official code,
TinyBERT augmentation, resume, and config errors. Tiny random BERTs, synthetic data."""
import json
import math

import _tiny
import pytest
import torch

from kdfast.data.tinybert_augment import augment, candidates
from kdfast.distill import general_distill, task_distill
from kdfast.distill.objectives import TinyBERTLoss, check_pair
from kdfast.models import TeacherTaps, TransformerStudent, load_transformer_student, student_config

SMALL = dict(num_layers=2, hidden_size=8, num_heads=2, intermediate_size=16)
FAST = dict(batch_size=8, lr=2e-3, progress=False, log_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _bert_cfg(tok, layers=4, hidden=16, heads=2, dropout=0.1):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=2 * hidden,
                      max_position_embeddings=64, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout)


def _teacher(tok, layers=4, seed=0):
    from transformers import BertModel

    from kdfast.models import TeacherClassifier

    torch.manual_seed(seed)
    t = TeacherClassifier(BertModel(_bert_cfg(tok, layers)), 2, pooling="mean")
    with torch.no_grad():
        t.head.weight.mul_(30)  # confident teacher logits: a prediction loss with room to drop
    t.has_trained_head = True
    return t


def test_the_general_stages_fit_dense_goes_on_to_task_distillation(tmp_path):
    # TinyBERT's task distillation starts from the general student *and* its projection
    from kdfast.distill.tinybert import transformer_student

    tok = _tiny.tokenizer(tmp_path)
    cfg = _teacher(tok).encoder.config
    general = transformer_student(SMALL, cfg, None, seed=1)
    with torch.no_grad():
        general.fit_dense.weight.add_(1.0)  # "trained": no fresh init gives these
    general.save_pretrained(tmp_path / "general")
    for given in (general, tmp_path / "general", str(tmp_path / "general")):
        st = transformer_student(given, cfg, 3, seed=2)
        assert st.num_labels == 3
        torch.testing.assert_close(st.fit_dense.weight, general.fit_dense.weight)
    # a bare model (no projection to keep) gets a fresh one
    st = transformer_student(general.model, cfg, 3, seed=2)
    assert not torch.equal(st.fit_dense.weight, general.fit_dense.weight)


def _first_last(history, n=3):
    losses = [v for _, v in history]
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def test_task_distillation_both_steps_end_to_end(tmp_path):
    from transformers import BertForSequenceClassification

    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    st, res = task_distill(teacher, _tiny.task(32), tmp_path / "out", tokenizer=tok, student=SMALL,
                           n_a=2, k=3, step1=dict(max_steps=20), step2=dict(max_steps=8), **FAST)
    assert res["transfer_examples"] == 32 * 3  # each sentence + n_a variants
    a, b = _first_last(res["step1"]["loss_history"])
    assert b < 0.8 * a, res["step1"]["loss_history"]
    a, b = _first_last(res["step2"]["loss_history"])
    assert b < a, res["step2"]["loss_history"]
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    # the student is a plain transformers model: load and run without kdfast
    path = tmp_path / "out" / "step2" / "student"
    plain = BertForSequenceClassification.from_pretrained(str(path)).eval()
    ids = torch.tensor([tok("a good movie")["input_ids"]])
    st.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, st.model(input_ids=ids).logits)
    again = load_transformer_student(path, teacher_hidden=16)
    torch.testing.assert_close(again.fit_dense.weight, st.fit_dense.weight)
    assert (tmp_path / "out" / "augmented.jsonl").is_file()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (saved["mode"], saved["alpha"]) == ("masked", 0.5)  # the defaults


def test_general_distillation_end_to_end_masked_mode(tmp_path):
    from transformers import BertModel

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(0)
    teacher = BertModel(_bert_cfg(tok))  # pre-trained encoder, no head
    texts, _ = _tiny.sentences(64)
    _, res = general_distill(teacher, texts, tmp_path / "g", tokenizer=tok, student=SMALL,
                             mode="masked", max_steps=30, **FAST)
    a, b = _first_last(res["loss_history"])
    assert b < 0.8 * a, res["loss_history"]
    plain = BertModel.from_pretrained(str(tmp_path / "g" / "general" / "student"))
    assert plain.config.num_hidden_layers == 2 and plain.config.hidden_size == 8
    for bad in (0, -1):  # max_len=None means the default; a bad value is still an error
        with pytest.raises(ValueError, match="max_len"):
            general_distill(teacher, texts, None, tokenizer=tok, student=SMALL, max_len=bad,
                            max_steps=1, **FAST)


def test_teacher_runs_once_per_step(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    calls = []
    teacher.encoder.register_forward_hook(lambda *a: calls.append(1))
    general_distill(teacher.encoder, _tiny.sentences(16)[0], None, tokenizer=tok, student=SMALL,
                    max_steps=3, **FAST)
    assert len(calls) == 3


def _official_scores(model, hidden_states, mask):
    """The official TinyBERT attention scores, by hand: QK^T/sqrt(d) + (1 - mask) * -10000."""
    base = model.base_model
    cfg = base.config
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    out = []
    for layer, h in zip(base.encoder.layer, hidden_states):
        s = layer.attention.self
        b, n, _ = h.shape
        q = s.query(h).view(b, n, heads, d).transpose(1, 2)
        k = s.key(h).view(b, n, heads, d).transpose(1, 2)
        out.append(q @ k.transpose(-1, -2) / math.sqrt(d)
                   + (1.0 - mask[:, None, None, :].float()) * -10000.0)
    return out


def _official_loss(s_scores, t_scores, s_reps, t_reps, fit_dense):
    """TinyBERT task_distill.py, intermediate step (loss_mse = nn.MSELoss())."""
    mse = torch.nn.MSELoss()
    att = 0.0
    for sa, ta in zip(s_scores, t_scores):
        sa = torch.where(sa <= -1e2, torch.zeros_like(sa), sa)
        ta = torch.where(ta <= -1e2, torch.zeros_like(ta), ta)
        att = att + mse(sa, ta)
    rep = 0.0
    for sr, tr in zip(s_reps, t_reps):
        rep = rep + mse(fit_dense(sr), tr)
    return att + rep


def test_exact_mode_reproduces_the_official_loss(tmp_path):
    from transformers import BertForSequenceClassification

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(1)
    from transformers import BertModel

    from kdfast.models import TeacherClassifier

    teacher = TeacherClassifier(BertModel(_bert_cfg(tok, 4, dropout=0.0)), 2, pooling="mean").eval()
    cfg = student_config(teacher.encoder.config, num_labels=2, **SMALL)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    st = TransformerStudent(BertForSequenceClassification(cfg), 16).train()
    ids = torch.tensor([tok("the good movie was very nice .")["input_ids"],
                        tok("a dull plot")["input_ids"] + [0] * 4])
    mask = (ids != 0).long()
    mask[1, 5:] = 0
    batch = {"t_input_ids": ids, "t_attention_mask": mask, "t_token_type_ids": torch.zeros_like(ids)}
    taps = TeacherTaps(teacher)
    with torch.no_grad():
        t_out = taps.forward_batch(batch)
    loss_fn = TinyBERTLoss(st, teacher.encoder.config, mode="exact")
    loss = loss_fn(st.forward_batch(batch), batch, t_out)
    # by hand, from the weights (no capture involved): student layer m <-> teacher layer 2m
    with torch.no_grad():
        t_h = teacher.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s_h = st.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        t_sc = _official_scores(teacher.encoder, t_h[:-1], mask)
        s_sc = _official_scores(st.model, s_h[:-1], mask)
        want = _official_loss(s_sc, [t_sc[1], t_sc[3]], list(s_h), [t_h[0], t_h[2], t_h[4]],
                              st.fit_dense)
    torch.testing.assert_close(loss.detach(), want.float(), rtol=1e-5, atol=1e-6)
    loss.backward()  # differentiable through the captured scores and fit_dense
    assert st.fit_dense.weight.grad is not None
    assert st.model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0

    # prediction step: (-softmax(t) * log_softmax(s)).mean() over batch x classes
    pred = TinyBERTLoss(st, teacher.encoder.config, stage="prediction", mode="exact")
    s_logits, t_logits = torch.randn(4, 3), torch.randn(4, 3)
    want = (-torch.softmax(t_logits, -1) * torch.log_softmax(s_logits, -1)).mean()
    torch.testing.assert_close(pred(s_logits, {}, {"logits": t_logits}), want)
    masked = TinyBERTLoss(st, teacher.encoder.config, stage="prediction", mode="masked")
    torch.testing.assert_close(masked(s_logits, {}, {"logits": t_logits}), want * 3)


def test_masked_mode_ignores_padding_exact_mode_does_not(tmp_path):
    from transformers import BertForSequenceClassification, BertModel

    from kdfast.models import TeacherClassifier

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(2)
    teacher = TeacherClassifier(BertModel(_bert_cfg(tok, 2, dropout=0.0)), 2).eval()
    cfg = student_config(teacher.encoder.config, num_labels=2, **SMALL)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    st = TransformerStudent(BertForSequenceClassification(cfg), 16).train()
    ids = torch.tensor([tok("the good movie was very nice .")["input_ids"]])

    def loss(mode, pad):
        x = torch.cat([ids, torch.zeros(1, pad, dtype=torch.long)], 1)
        m = (torch.arange(x.shape[1]) < ids.shape[1]).long()[None]
        b = {"t_input_ids": x, "t_attention_mask": m, "t_token_type_ids": torch.zeros_like(x)}
        with torch.no_grad():
            t_out = TeacherTaps(teacher).forward_batch(b)
        fn = TinyBERTLoss(st, teacher.encoder.config, mode=mode)
        return fn(st.forward_batch(b), b, t_out).detach()

    torch.testing.assert_close(loss("masked", 0), loss("masked", 4), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss("exact", 0), loss("exact", 4))
    assert torch.isfinite(loss("masked", 4))


class _Stop(Exception):
    pass


def test_resume_continues_from_the_checkpoint(tmp_path):
    from transformers import BertModel

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(0)
    teacher = BertModel(_bert_cfg(tok))
    texts = _tiny.sentences(40)[0]
    kw = dict(tokenizer=tok, max_steps=10, checkpoint_every=3, **FAST)

    def stop(d, step):
        if step == 7:
            raise _Stop

    with pytest.raises(_Stop):
        general_distill(teacher, texts, tmp_path / "b", student=SMALL, callbacks=[stop], **kw)
    saved = torch.load(tmp_path / "b" / "general" / "checkpoint" / "last.pt", weights_only=False)
    assert saved["state"]["step"] == 6
    assert any(k.startswith("fit_dense.") for k in saved["model"])  # the projection is saved too
    _, res = general_distill(teacher, texts, tmp_path / "b", student=SMALL, resume=True, **kw)
    assert res["steps"] == 10 and [s for s, _ in res["loss_history"]] == list(range(1, 11))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    from transformers import BertModel

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(0)
    teacher = BertModel(_bert_cfg(tok))
    texts = _tiny.sentences(40)[0]
    kw = dict(tokenizer=tok, max_steps=10, checkpoint_every=3, **FAST)
    full, _ = general_distill(teacher, texts, tmp_path / "a", student=SMALL, **kw)

    def stop(d, step):
        if step == 7:
            raise _Stop

    with pytest.raises(_Stop):
        general_distill(teacher, texts, tmp_path / "b", student=SMALL, callbacks=[stop], **kw)
    resumed, _ = general_distill(teacher, texts, tmp_path / "b", student=dict(SMALL),
                                 resume=True, seed=0, **{k: v for k, v in kw.items()})
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_configs_give_clear_errors(tmp_path):
    from transformers import BertConfig

    tok = _tiny.tokenizer(tmp_path)
    t = _bert_cfg(tok, layers=4, hidden=16, heads=2)
    # 3 of 4 layers: the uniform map rounds m*N/M (the layers ETD's extraction keeps)
    assert check_pair(t, student_config(t, num_layers=3, hidden_size=8, num_heads=2,
                                        intermediate_size=8)) == ([0, 2, 3], [0, 1, 3, 4])
    with pytest.raises(ValueError, match="4 heads but the teacher has 2"):
        check_pair(t, student_config(t, num_layers=2, hidden_size=8, num_heads=4, intermediate_size=8))
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        student_config(t, num_layers=2, hidden_size=10, num_heads=4, intermediate_size=8)
    with pytest.raises(ValueError, match="fit_dense"):
        check_pair(t, student_config(t, num_layers=2, hidden_size=8, num_heads=2, intermediate_size=8),
                   projection=False)
    with pytest.raises(ValueError, match="not a multiple"):
        check_pair(t, BertConfig(vocab_size=t.vocab_size, hidden_size=9, num_attention_heads=2,
                                 num_hidden_layers=2))
    with pytest.raises(ValueError, match="mode"):
        task_distill(_teacher(tok), _tiny.task(8), None, tokenizer=tok, student=SMALL, mode="loose")
    # the recipe refuses before training
    with pytest.raises(ValueError, match="4 heads but the teacher has 2"):
        general_distill(_teacher(tok).encoder, ["a good movie"], None, tokenizer=tok,
                        student=dict(SMALL, num_heads=4), max_steps=1, progress=False)


# ------------------------------------------------------------------------- augmentation
def _mlm(tok, seed=0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32,
                                      max_position_embeddings=64)).eval()


def test_augmentation_with_mlm_is_batched_deterministic_and_replaces(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    mlm = _mlm(tok)
    calls = []
    mlm.register_forward_hook(lambda *a: calls.append(1))
    texts = _tiny.sentences(10)[0]
    a1, b1, src = augment(texts, tokenizer=tok, mlm=mlm, n_a=5, p_t=0.4, k=4, seed=3)
    n_words = sum(len(t.split()) for t in texts)
    assert len(calls) == 1 < n_words  # one batched MLM pass, not one per word
    assert b1 is None and len(a1) == 10 * 6 and src == [i for i in range(10) for _ in range(6)]
    assert [a1[6 * i] for i in range(10)] == texts  # originals first
    a2, _, _ = augment(texts, tokenizer=tok, mlm=mlm, n_a=5, p_t=0.4, k=4, seed=3)
    assert a1 == a2
    a3, _, _ = augment(texts, tokenizer=tok, mlm=mlm, n_a=5, p_t=0.4, k=4, seed=4)
    assert a1 != a3
    # candidates: whole words of the vocabulary, never the word itself, at most k
    sents = [t.split() for t in texts]
    cands = candidates(sents, tok, mlm=mlm, k=4)
    vocab = set(tok.get_vocab())
    for ws, cs in zip(sents, cands):
        for w, c in zip(ws, cs):
            if w == ".":
                assert c == []  # punctuation is never replaced
                continue
            assert 0 < len(c) <= 4 and w not in c and set(c) <= vocab
            assert not any(x.startswith(("[", "##")) for x in c)
    # p_t = 0: variants equal the source; p_t = 1: every word with candidates is replaced
    same, _, _ = augment(texts, tokenizer=tok, mlm=mlm, n_a=2, p_t=0.0, k=4)
    assert all(s == texts[i] for s, i in zip(same, [i for i in range(10) for _ in range(3)]))
    allrep, _, _ = augment(texts[:1], tokenizer=tok, mlm=mlm, n_a=3, p_t=1.0, k=4)
    for v in allrep[1:]:
        for w, nw in zip(texts[0].split(), v.split()):
            assert (nw != w) or w == "."


def test_an_mlm_given_by_path_is_checked_and_used(tmp_path, monkeypatch):
    from transformers import BertModel

    import kdfast.data.tinybert_augment as tba
    from kdfast.distill.tinybert import task_setup

    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    _mlm(tok).save_pretrained(tmp_path / "mlm")
    BertModel(_mlm(tok).config).save_pretrained(tmp_path / "encoder")  # no MLM head
    with pytest.raises(ValueError, match="no trained MLM head"):
        task_setup(teacher, _tiny.task(16), tokenizer=tok, mlm=tmp_path / "encoder")
    with pytest.raises(ValueError, match="cannot load a BERT masked LM"):
        task_setup(teacher, _tiny.task(16), tokenizer=tok, mlm=str(tmp_path / "nothing"))
    with pytest.raises(TypeError, match="mlm must be"):
        task_setup(teacher, _tiny.task(16), tokenizer=tok, mlm=3)
    seen = []
    real = tba.augment
    monkeypatch.setattr(tba, "augment", lambda *a, **k: seen.append(k["mlm"]) or real(*a, **k))
    run = task_setup(teacher, _tiny.task(16), tokenizer=tok, mlm=str(tmp_path / "mlm"), n_a=1,
                     k=2, step1=dict(max_steps=1), step2=dict(max_steps=1), **FAST)
    run(None, SMALL)
    assert len(seen) == 1 and type(seen[0]).__name__ == "BertForMaskedLM"


def test_augmentation_embedding_neighbours_glove_pairs_and_cache(tmp_path, monkeypatch):
    tok = _tiny.tokenizer(tmp_path)
    emb = torch.randn(len(tok), 8)
    good, great = (tok.convert_tokens_to_ids(w) for w in ("good", "great"))
    emb[great] = emb[good] * 2 + 0.01  # cosine neighbours
    c = candidates([["good", "bad"]], tok, embeddings=emb, k=2)
    assert c[0][0][0] == "great" and "good" not in c[0][0] and len(c[0][1]) == 2
    glove = tmp_path / "glove.txt"
    glove.write_text("good 1 0 0\nfine 0.9 0.1 0\nbad -1 0 0\nawful -0.9 0 0.1\n")
    c = candidates([["good", "bad", "plot"]], tok, glove=str(glove), k=1)
    assert c == [[["fine"], ["awful"], []]]  # a word missing from GloVe has no candidates
    with pytest.raises(ValueError, match="candidates"):
        candidates([["good"]], tok)
    # pairs: only text_a is augmented; the cache is written once and read back
    cache = tmp_path / "aug.jsonl"
    a, b, _ = augment(["good movie", "bad plot"], ["the film", "a story"], tokenizer=tok,
                      embeddings=emb, n_a=3, p_t=0.5, k=2, seed=1, cache=cache)
    assert b == ["the film"] * 4 + ["a story"] * 4
    import kdfast.data.tinybert_augment as tba

    monkeypatch.setattr(tba, "candidates", lambda *a, **k: pytest.fail("recomputed"))
    a2, b2, _ = augment(["good movie", "bad plot"], ["the film", "a story"], tokenizer=tok,
                        embeddings=emb, n_a=3, p_t=0.5, k=2, seed=1, cache=cache)
    assert (a2, b2) == (a, b)


@pytest.mark.parametrize("style,mode", [("tinybert", "exact"), ("tinybert", "masked"),
                                        ("minilm", "exact"), ("minilm", "masked")])
def test_attention_from_qk_matches_the_score_maps_in_a_training_step(tmp_path, style, mode):
    """The recipes' default (Q and K captured, models on SDPA, map-free losses) gives the loss
    and the student gradients of the score-map path (eager attention, map losses)."""
    import copy

    from transformers import BertForSequenceClassification, BertModel

    from kdfast.distill.tinybert import teacher_taps, transformer_student
    from kdfast.models import TeacherClassifier

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(3)
    teacher = TeacherClassifier(BertModel(_bert_cfg(tok, 4, dropout=0.0)), 2,
                                pooling="mean").double().eval()
    cfg = student_config(teacher.encoder.config, num_labels=2, num_layers=2, hidden_size=12,
                         num_heads=2, intermediate_size=16)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    base = transformer_student(BertForSequenceClassification(cfg), teacher.encoder.config, 2,
                               style=style).double().train()
    enc = tok(["the good movie was very nice and the plot .", "a dull plot", "superb"],
              padding=True, return_tensors="pt")  # ragged: a row with one word
    ids, mask = enc["input_ids"], enc["attention_mask"]
    batch = {"t_input_ids": ids, "t_attention_mask": mask,
             "t_token_type_ids": torch.zeros_like(ids)}
    got = {}
    for attention in ("qk", "scores"):
        st = copy.deepcopy(base)
        loss_fn = TinyBERTLoss(st, teacher.encoder.config, mode=mode, style=style,
                               attention=attention)
        assert attention in loss_fn.needs and st.attention == attention
        with torch.no_grad():
            t_out = teacher_taps(teacher, style).taps(batch, loss_fn.needs)
        loss = loss_fn(st.forward_batch(batch), batch, t_out)
        loss.backward()
        got[attention] = (loss.detach(), {n: p.grad.clone() for n, p in st.named_parameters()
                                          if p.grad is not None})
    (l_qk, g_qk), (l_maps, g_maps) = got["qk"], got["scores"]
    torch.testing.assert_close(l_qk, l_maps, rtol=1e-10, atol=1e-12)
    assert g_qk.keys() == g_maps.keys() and any("query" in n for n in g_qk)
    for n in g_qk:
        torch.testing.assert_close(g_qk[n], g_maps[n], rtol=1e-8, atol=1e-10, msg=n)


def test_attention_form_is_checked():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16)
    st = TransformerStudent(BertForSequenceClassification(cfg), 8)
    with pytest.raises(ValueError, match="attention must be one of"):
        TinyBERTLoss(st, cfg, attention="maps")
