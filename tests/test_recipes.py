"""The recipes (teacher fine-tuning, Tang, SRA) end to end on a tiny random BERT and
synthetic data, the teacher/student wiring, and the command line."""
import importlib

import pytest
import torch

import _tiny
from kdfast.data.tokenize import collate, encode
from kdfast.distill import finetune, load_student, sra, tang
from kdfast.models import load_teacher
from kdfast.nn.students import BiLSTMClassifier, SiameseBiLSTMClassifier

FAST = dict(lstm_hidden_size=8, fc_size=8, progress=False, optimizer="adam", lr=5e-3, log_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tokenizer, a fine-tuned tiny teacher (saved) and a synthetic sentiment task."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("tiny")
    tok = _tiny.tokenizer(d)
    task = _tiny.task(160)
    teacher, res = finetune(_tiny.teacher(tok), task, d / "ft", tokenizer=tok, epochs=4, lr=5e-3,
                            batch_size=16, progress=False)
    yield tok, task, teacher, res, d
    torch.set_num_threads(threads)  # the rest of the session keeps its threads


def _first_last(res, k=3):
    h = [l for _, l in res["loss_history"]]
    return sum(h[:k]) / k, sum(h[-k:]) / k


def test_finetune_learns_and_saves_a_loadable_teacher(tiny):
    tok, task, teacher, res, d = tiny
    first, last = _first_last(res)
    assert last < first and res["test"]["accuracy"] > 0.7
    again = load_teacher(str(d / "ft" / "teacher"))
    assert again.has_trained_head and again.num_labels == 2 and again.pooling == "mean"
    b = {k: v for k, v in collate(encode(tok, task.test.texts[:4])).items()}
    teacher.eval()
    torch.testing.assert_close(again.eval().forward_batch(b), teacher.forward_batch(b))
    with pytest.raises(ValueError, match="labels"):
        load_teacher(str(d / "ft" / "teacher"), num_labels=3)


def test_tang_distils_on_the_cached_augmented_transfer_set(tiny, tmp_path, monkeypatch):
    tok, task, teacher, _, _ = tiny
    cache = tmp_path / "cache" / "transfer.pt"
    student, res = tang(teacher, task, tmp_path / "kd", tokenizer=tok, n_iter=3, epochs=3,
                        transfer_cache=cache, **FAST)
    ts = res["transfer_set"]
    assert ts["originals"] == len(task.train) and ts["augmented"] > len(task.train)
    first, last = _first_last(res)
    assert last < first
    # the student starts from the teacher's input embeddings (non-static: it moved since)
    assert student.encoder.embedding.weight.shape == teacher.input_embeddings().shape
    again = load_student(tmp_path / "kd" / "student")
    assert isinstance(again, BiLSTMClassifier) and again.config == student.config
    from kdfast.data.tokenize import load_tokenizer  # the tokenizer is saved with it

    assert load_tokenizer(tmp_path / "kd" / "student").get_vocab() == tok.get_vocab()
    # a second run reuses the cached transfer set: the teacher is not called again
    plumbing = importlib.import_module("kdfast.distill.plumbing")
    monkeypatch.setattr(plumbing, "teacher_outputs", lambda *a, **k: pytest.fail("teacher called"))
    _, res2 = tang(teacher, task, tmp_path / "kd", tokenizer=tok, n_iter=3, epochs=1,
                   transfer_cache=cache, overwrite=True, **FAST)
    assert res2["transfer_set"] == ts


def test_tang_pairs_with_temperature_kl(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    task = _tiny.task(80, pair=True)
    teacher = _tiny.teacher(tok)
    teacher.has_trained_head = True  # an untrained head is still a teacher
    student, res = tang(teacher, task, tmp_path / "pairs", tokenizer=tok, loss="kl",
                        temperature=3.0, n_iter=2, epochs=3, batch_size=16, **FAST)
    assert isinstance(student, SiameseBiLSTMClassifier)
    first, last = _first_last(res)
    assert last < first
    assert isinstance(load_student(tmp_path / "pairs" / "student"), SiameseBiLSTMClassifier)


def test_sra_pretrains_then_finetunes(tiny, tmp_path, monkeypatch):
    from kdfast.nn.students import SRAEncoder

    tok, task, teacher, _, _ = tiny
    started = []  # the stage-2 classifier's encoder weights as built, before it trains
    real = SRAEncoder.classifier

    def spy(self, *a, **k):
        model = real(self, *a, **k)
        started.append({n: v.clone() for n, v in model.encoder.state_dict().items()})
        return model

    monkeypatch.setattr(SRAEncoder, "classifier", spy)
    model, res = sra(teacher, task, tmp_path / "sra", tokenizer=tok, stage1={"epochs": 4},
                     epochs=2, **FAST)
    monkeypatch.undo()
    first, last = _first_last(res["stage1"])
    assert last < first and res["unlabelled_sentences"] == len(set(task.train.texts))
    enc = load_student(tmp_path / "sra" / "stage1" / "encoder")
    (at_start,) = started  # stage 2 started from stage 1's (saved) encoder weights
    for k, v in enc.encoder.state_dict().items():
        torch.testing.assert_close(at_start[k], v)
        assert v.shape == model.encoder.state_dict()[k].shape
    assert load_student(tmp_path / "sra" / "stage2" / "student").config["pooling"] == "max"
    _, res_kd = sra(teacher, task, tmp_path / "sra2", tokenizer=tok, stage1={"epochs": 1},
                    stage2="tang", n_iter=1, epochs=1, unlabelled=["a film is a film"], **FAST)
    assert res_kd["stage2"]["transfer_set"]["augmented"] > 0


def test_word_vectors_file_initialises_a_multichannel_student(tiny, tmp_path):
    tok, task, teacher, _, _ = tiny
    vec = tmp_path / "glove.txt"
    vec.write_text("\n".join(f"{w} " + " ".join(str(i + k / 10) for k in range(6))
                             for i, w in enumerate(_tiny.WORDS)) + "\n")
    student, _ = tang(teacher, task, tmp_path / "mc", tokenizer=tok, n_iter=1, epochs=1,
                      embeddings=str(vec), embedding_mode="multichannel", **FAST)
    assert student.config["embed_dim"] == 6 and student.config["embedding_mode"] == "multichannel"
    frozen = student.encoder.static.weight  # the frozen channel keeps the file's vectors
    assert not frozen.requires_grad
    good = tok.convert_tokens_to_ids("good")
    assert frozen[good].tolist() == pytest.approx([_tiny.WORDS.index("good") + k / 10 for k in range(6)])


def test_recipe_errors(tiny, tmp_path):
    tok, task, teacher, _, _ = tiny
    raw = _tiny.teacher(tok)
    with pytest.raises(ValueError, match="kdfast finetune"):
        tang(raw, task, tmp_path / "a", tokenizer=tok, **FAST)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        big = _tiny.tokenizer(tmp_path)
        big.add_tokens([f"extra{i}" for i in range(50)])
        tang(teacher, task, tmp_path / "b", tokenizer=big, **FAST)
    with pytest.raises(ValueError, match="tang loss"):
        tang(teacher, task, tmp_path / "c", tokenizer=tok, loss="cosine", **FAST)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    with pytest.raises(FileExistsError, match="--overwrite"):
        tang(teacher, task, tmp_path / "d", tokenizer=tok, **FAST)
    with pytest.raises(ValueError, match="stage2"):
        sra(teacher, task, tmp_path / "e", tokenizer=tok, stage2="ce", **FAST)
    with pytest.raises(ValueError, match="embeddings='random'"):
        tang(teacher, task, tmp_path / "f", tokenizer=tok, embeddings="random",
             embedding_mode="static", **FAST)


@pytest.mark.real
def test_offline_teacher_loads_with_its_tokenizer():
    from kdfast.data.tokenize import load_tokenizer
    from kdfast.models.teachers import resolve_teacher_path

    path = resolve_teacher_path("minilm-l6")
    t = load_teacher(path, num_labels=2)
    tok = load_tokenizer(path)
    assert t.pooling == "mean" and len(tok) == t.vocab_size == 30522 and not t.has_trained_head
