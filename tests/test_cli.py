"""The command line: one table, the same flag everywhere, aliases, one-line errors with exit
status 2 that leave the output directory untouched, and every recipe end to end on tiny
models through ``kdfast.cli.main``."""
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _tiny
from kdfast import cli
from kdfast.distill.outputs import MARKER

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``kdfast ARGV`` run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # --help
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(path: Path) -> dict:
    """Every file under ``path`` with its checksum (an untouched directory keeps it)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def assert_user_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kdfast ") and ": error: " in lines[0], err
    for n in needles:
        assert n in lines[0], (n, err)


# ----------------------------------------------------------------------------- the table
def test_every_command_has_help(capsys):
    for path in cli.COMMANDS:
        code, out, _ = run(path.split() + ["--help"], capsys)
        assert code == 0 and "usage: kdfast " + path in out
        for name in cli.COMMANDS[path].options:
            assert cli._flag(name) in out, (path, name)


def test_python_dash_m_kdfast_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "kdfast", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0
    for name in ("info", "demo", "finetune", "distill", "extract", "eval", "bench"):
        assert name in out.stdout


SAMPLE = {cli.POSITIVE_INT: "3", cli.COUNT: "0", cli.POSITIVE: "0.5", cli.NON_NEGATIVE: "0",
          cli.FRACTION: "0.25", cli.FRACTION_BELOW_1: "0.25", cli.SEED: "7", cli.TEXT: "abc", cli.LIST: "a,b", str: None}


def test_the_same_flag_parses_the_same_way_in_every_command():
    parser = cli.build_parser()
    seen = {}
    for path, cmd in cli.COMMANDS.items():
        for name in cmd.options:
            opt = cli.OPTIONS[name]
            if opt.type is cli.BOOL:
                argv, want = [cli._flag(name)], True
            elif opt.type is cli.DEVICE:
                argv, want = [cli._flag(name), "cpu"], "cpu"
            else:
                value = opt.choices[-1] if opt.choices else SAMPLE[opt.type]
                argv, want = [cli._flag(name), value], opt.type(value) if not opt.choices \
                    else value
            args = parser.parse_args(path.split() + argv + (["losses"] if path == "bench" else []))
            assert getattr(args, name) == want, (path, name)
            seen.setdefault(name, set()).add(path)
    # the BERT student's size has one spelling in every command that builds one
    for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
        assert {"distill tinybert", "distill etd", "extract"} <= seen[name]
    assert "hidden_size" not in cli.COMMANDS["distill tang"].options  # that is --lstm-hidden-size


def test_choices_are_the_librarys():
    """cli.py does not import the library (fast --help), so its choice lists are copies: they
    must name exactly what the library accepts."""
    from kdfast.data.metrics import METRICS
    from kdfast.distill.etd import STRATEGIES
    from kdfast.distill.objectives import MODES, STYLES, VECTOR_KINDS
    from kdfast.distill.sra import STAGE2
    from kdfast.distill.tang import TANG_LOSSES
    from kdfast.distill.tinybert import STAGES
    from kdfast.distill.trainer import OPTIMIZERS, SCHEDULERS
    from kdfast.integrations.logging import REPORT_TO
    from kdfast.models.teachers import POOLINGS as VECTORS
    from kdfast.nn.students import EMBEDDING_MODES, POOLINGS
    from kdfast.ops._backend import BACKENDS

    library = {"metric": METRICS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
               "report_to": REPORT_TO, "loss": TANG_LOSSES, "embedding_mode": EMBEDDING_MODES,
               "pooling": POOLINGS, "vector": VECTORS, "stage1_loss": VECTOR_KINDS,
               "stage2": STAGE2, "mode": MODES, "style": STYLES, "stage": STAGES,
               "strategy": STRATEGIES, "backend": BACKENDS}
    for name, allowed in library.items():
        assert set(cli.OPTIONS[name].choices) == set(allowed), name


def test_aliases_are_the_distill_recipes(capsys):
    assert cli.ALIASES == {"tinybert": ("distill", "tinybert"), "etd-distill": ("distill", "etd")}
    for alias, words in cli.ALIASES.items():
        code, out, _ = run([alias, "--help"], capsys)
        assert code == 0 and out.startswith("usage: kdfast " + " ".join(words))


def test_config_file_values_are_checked_like_the_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["distill", "tang", "--teacher", "t", "--task", "movie-sentences", "--out", out]
    cfg = tmp_path / "c.yaml"
    cases = {
        "epochs: -2\n": "expected a number > 0",
        "optimizer: sgdx\n": "optimizer must be one of",
        "learning_rate: 1\n": "has no option --learning-rate",
        "augment: maybe\n": "augment must be true or false",
        "epochs: [1\n": "not valid YAML",
        "- a\n- b\n": "must hold a mapping",
        "unlabelled: 3\n": "has no option --unlabelled",  # not a tang option
    }
    for text, needle in cases.items():
        cfg.write_text(text)
        assert_user_error(*run(base + ["--config", cfg], capsys)[::2], needle)
    cfg.write_bytes(b"epochs: \xff\xfe\n")
    assert_user_error(*run(base + ["--config", cfg], capsys)[::2], "not UTF-8")
    bad_json = tmp_path / "c.json"
    bad_json.write_text("{epochs: 1}")
    assert_user_error(*run(base + ["--config", bad_json], capsys)[::2], "not valid JSON")
    assert_user_error(*run(base + ["--config", tmp_path / "nope.yaml"], capsys)[::2],
                      "no such file")
    assert not out.exists()


def test_list_option_is_the_same_from_the_command_line_and_a_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    parser = cli.build_parser()
    argv = ["distill", "sra", "--teacher", "t", "--task", "x", "--out", "o"]
    from_cli = cli.resolve_options(parser.parse_args(argv + ["--unlabelled", "a, b"]))
    cfg.write_text("unlabelled: [a, b]\n")
    from_list = cli.resolve_options(parser.parse_args(argv + ["--config", str(cfg)]))
    cfg.write_text("unlabelled: a,b\n")
    from_str = cli.resolve_options(parser.parse_args(argv + ["--config", str(cfg)]))
    assert from_cli["unlabelled"] == from_list["unlabelled"] == from_str["unlabelled"] == ["a", "b"]


# ----------------------------------------------------------------------------- mistakes
@pytest.fixture
def precious(tmp_path):
    """An output directory that holds a user's files (not written by kdfast)."""
    d = tmp_path / "precious"
    (d / "sub").mkdir(parents=True)
    (d / "results.json").write_text('{"mine": 1}\n')
    (d / "sub" / "notes.txt").write_text("do not lose me\n")
    return d


MISTAKES = {  # argv after the command, the words the one-line message must hold
    "bad value": (["--epochs", "-2"], "--epochs"),
    "bad choice": (["--optimizer", "sgdx"], "--optimizer"),
    "zero size": (["--lstm-hidden-size", "0"], "--lstm-hidden-size"),
    "negative n-aug": (["--n-aug", "-3"], "--n-aug"),
    "zero n-aug": (["--n-aug", "0"], "--n-aug"),  # no copies is --no-augment
    "warm-up of all steps": (["--warmup", "1"], "--warmup"),
    "uninstalled logger": (["--report-to", "wandb"], "wandb"),
    "negative max-len": (["--max-len", "-5"], "--max-len"),
    "infinite epochs": (["--epochs", "inf"], "--epochs"),
    "overflowing lr": (["--lr", "1e400"], "--lr"),
    "unknown option": (["--learning-rate", "1"], "unrecognized"),
    "no cuda": (["--device", "cuda"], "--device"),
    "out exists": ([], "--overwrite"),
    "overwrite a foreign dir": (["--overwrite"], "not written by kdfast"),
    "resume without checkpoint": (["--resume"], "nothing to resume"),
    "both": (["--resume", "--overwrite"], "not both"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_mistake_is_one_line_exit_2_and_the_output_untouched(mistake, precious, tmp_path, capsys):
    if mistake == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if mistake == "uninstalled logger" and importlib.util.find_spec("wandb"):
        pytest.skip("this machine has wandb")
    before = snapshot(precious)
    extra, needle = MISTAKES[mistake]
    (tmp_path / "teacher").mkdir()
    argv = ["distill", "tang", "--teacher", tmp_path / "teacher", "--task", "movie-sentences",
            "--out", precious] + extra
    assert_user_error(*run(argv, capsys)[::2], needle)
    assert snapshot(precious) == before


@pytest.mark.parametrize("argv,needle", [
    (["finetune", "--task", "csv:/no/such.csv", "--out", "{out}"], "no such file"),
    (["distill", "sra", "--teacher", "t", "--task", "x", "--out", "{out}", "--vector", "median"],
     "--vector"),
    (["distill", "etd", "--teacher", "t", "--task", "x", "--out", "{out}",
      "--importance-batches", "0"], "--importance-batches"),
    (["extract", "--teacher", "t", "--out", "{out}", "--num-layers", "1", "--hidden-size", "8",
      "--num-heads", "2", "--intermediate-size", "8", "--batch-size", "0"], "--batch-size"),
    (["extract", "--teacher", "t", "--out", "{out}", "--num-layers", "1"], "--hidden-size"),
    (["extract", "--teacher", "t", "--out", "{out}", "--max-len", "0"], "--max-len"),
    (["demo", "--student-optimizer", "sgdx"], "--student-optimizer"),
    (["distill"], "RECIPE"),
    (["distill", "tang"], "missing --out, --task, --teacher"),
    (["eval", "--model", "./no/such/dir", "--task", "movie-sentences"], "no such directory"),
    (["distill", "sra", "--teacher", "t", "--task", "x", "--out", "{out}",
      "--unlabelled", "movie-sentences,text:/no/such.txt"], "--unlabelled text:/no/such.txt"),
    (["distill", "tinybert", "--teacher", "t", "--task", "x", "--out", "{out}",
      "--glove", "/no/glove.txt"], "--glove"),
    (["distill", "etd", "--teacher", "t", "--task", "x", "--out", "{out}", "--no-task-specific",
      "--step2-lr", "1e-4", "--alpha", "0.2"], "--step2-lr, --alpha: task-specific ETD only"),
    (["distill", "tinybert", "--teacher", "t", "--task", "x", "--out", "{out}", "--stage",
      "general", "--n-aug", "5", "--step1-epochs", "2"], "--n-aug, --step1-epochs: task distil"),
    (["distill", "tinybert", "--teacher", "t", "--task", "x", "--out", "{out}",
      "--general-teacher", "g"], "--general-teacher: general distillation only"),
    (["distill", "tinybert", "--teacher", "t", "--task", "x", "--out", "{out}",
      "--mlm", "./no/such/mlm"], "--mlm ./no/such/mlm: no such directory"),
    (["bench", "nope"], "invalid choice"),
    # options the run would ignore are refused, not recorded as if used
    (["distill", "tang", "--teacher", "t", "--task", "x", "--out", "{out}", "--loss", "ce",
      "--alpha", "0.3", "--n-aug", "2"], "--alpha, --n-aug: --loss ce trains on the hard"),
    (["distill", "tang", "--teacher", "t", "--task", "x", "--out", "{out}", "--temperature",
      "3"], "--temperature: applies to --loss kl or soft_ce only"),
    (["distill", "tang", "--teacher", "t", "--task", "x", "--out", "{out}", "--no-augment",
      "--p-mask", "0.5"], "--p-mask: augmentation options, but --no-augment"),
    (["distill", "tinybert", "--teacher", "t", "--task", "x", "--out", "{out}", "--student",
      "s", "--num-layers", "2"], "--num-layers: --student s is the student"),
    (["distill", "etd", "--teacher", "t", "--task", "x", "--out", "{out}", "--strategy", "rand",
      "--importance-batches", "3"], "--importance-batches: applies to --strategy impt only"),
    (["distill", "etd", "--teacher", "t", "--task", "x", "--out", "{out}", "--no-augment",
      "--n-aug", "3"], "--n-aug: augmentation options, but --no-augment"),
])
def test_more_mistakes(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(out) if a == "{out}" else a for a in argv]
    assert_user_error(*run(argv, capsys)[::2], needle)
    assert not out.exists()


def test_paths_checked_up_front(tmp_path, capsys):
    data = tmp_path / "train.csv"
    data.write_text("text,label\na,0\nb,1\n")
    # TASK@N names the file without its @N
    argv = ["eval", "--model", "./no/such/dir", "--task", f"csv:{data}@5"]
    assert_user_error(*run(argv, capsys)[::2], "--model ./no/such/dir: no such directory")
    argv = ["distill", "tang", "--teacher", "t", "--task", "movie-sentences", "--out",
            tmp_path / "o", "--transfer-cache", tmp_path]
    assert_user_error(*run(argv, capsys)[::2], "a directory, not a file")
    # bench: --out checked before any timing; --quick results never take a full run's name
    assert_user_error(*run(["bench", "losses", "--quick", "--out", data], capsys)[::2],
                      "a file, not a directory")
    from kdfast.bench import harness
    assert harness.result_name("bilstm-cpu", True) == "bilstm-cpu-quick"
    # an output that is or holds a model being read is refused (--overwrite would delete it)
    teacher = tmp_path / "teacher"
    (teacher / "sub").mkdir(parents=True)
    for out in (teacher, tmp_path):
        argv = ["distill", "tang", "--teacher", teacher, "--task", "movie-sentences", "--out",
                out, "--overwrite"]
        assert_user_error(*run(argv, capsys)[::2], "overlap")
        assert (teacher / "sub").is_dir()


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["finetune", "--task", "csv:/no/such.csv", "--out", tmp_path / "o"]
    with pytest.raises(FileNotFoundError):
        cli.main([str(a) for a in argv] + ["--debug"])


def test_bad_csv_files_are_user_errors(tmp_path, capsys):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 good,1\nbad film,0\n".encode("latin-1"))
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "\n".join(f"film {i},1" for i in range(30)) + "\n")
    for path, needle in ((latin, "latin.csv"), (one, "one.csv")):
        argv = ["finetune", "--teacher", tmp_path, "--task", f"csv:{path}", "--out", tmp_path / "o"]
        assert_user_error(*run(argv, capsys)[::2], needle)
        assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny pre-trained BERT on disk and a CSV task (train/dev/test beside each other)."""
    d = tmp_path_factory.mktemp("cli")
    tok = _tiny.tokenizer(d)
    raw = _tiny.teacher(tok)
    raw.encoder.save_pretrained(str(d / "bert"))
    tok.save_pretrained(str(d / "bert"))
    for split, (n, seed) in {"train": (80, 0), "dev": (24, 1), "test": (24, 2)}.items():
        texts, labels = _tiny.sentences(n, seed)
        (d / f"{split}.csv").write_text(
            "text,label\n" + "\n".join(f"{t},{y}" for t, y in zip(texts, labels)) + "\n")
    return d


FAST = ["--no-progress", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "16"]


def test_finetune_distill_eval_overwrite_and_resume(env, tmp_path, capsys):
    task = f"csv:{env / 'train.csv'}"
    code, out, err = run(["finetune", "--teacher", env / "bert", "--task", task,
                          "--out", tmp_path / "ft", "--epochs", "2"] + FAST, capsys)
    assert code == 0, err
    teacher = tmp_path / "ft" / "teacher"
    cfg = tmp_path / "tang.yaml"
    cfg.write_text(f"task: csv:{env / 'train.csv'}\nteacher: {teacher}\nn-aug: 1\n"
                   "lstm_hidden_size: 8\nfc_size: 8\nepochs: 5\noptimizer: adam\nlr: 0.01\n")
    kd = tmp_path / "kd"
    code, out, err = run(["distill", "tang", "--config", cfg, "--out", kd, "--epochs", "1",
                          "--no-progress"], capsys)
    assert code == 0, err
    res = json.loads((kd / "results.json").read_text())
    assert res["config"]["epochs"] == 1.0 and res["config"]["optimizer"] == "adam"  # CLI > file
    # eval on a saved student and on the teacher
    for model in (kd / "student", teacher):
        code, out, err = run(["eval", "--model", model, "--task", task, "--json"], capsys)
        assert code == 0, err
        r = json.loads(out)
        assert r["examples"] == 24 and 0 <= r["metrics"]["accuracy"] <= 1 and r["parameters"] > 0
    # eval refuses a model of another class count, or more positions than it has, up front
    three = tmp_path / "three.csv"
    three.write_text("text,label\n" + "\n".join(f"w{i},{i % 3}" for i in range(30)) + "\n")
    for model in (kd / "student", teacher):
        assert_user_error(*run(["eval", "--model", model, "--task", f"csv:{three}"],
                               capsys)[::2], "predicts 2 classes but task")
    assert_user_error(*run(["eval", "--model", teacher, "--task", task, "--max-len", "100"],
                           capsys)[::2], "--max-len=100 but")
    # an existing run: refused without a flag, untouched
    before = snapshot(kd)
    assert_user_error(*run(["distill", "tang", "--config", cfg, "--out", kd], capsys)[::2],
                      "--overwrite")
    assert snapshot(kd) == before
    # a truncated checkpoint on --resume: one line naming the file
    ckpt = next(kd.rglob("checkpoint/last.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert_user_error(*run(["distill", "tang", "--config", cfg, "--out", kd, "--resume",
                            "--no-progress"], capsys)[::2], "last.pt")
    # --overwrite replaces a kdfast run
    code, _, err = run(["distill", "tang", "--config", cfg, "--out", kd, "--max-steps", "2",
                        "--overwrite", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((kd / "results.json").read_text())["steps"] == 2 and (kd / MARKER).is_file()
    # a config key the command has no option for is an error (sra has no --n-aug) ...
    assert_user_error(*run(["distill", "sra", "--config", cfg, "--out", tmp_path / "sra"],
                           capsys)[::2], "no option --n-aug")
    cfg.write_text(cfg.read_text().replace("n-aug: 1\n", ""))
    text = tmp_path / "unlabelled.txt"  # a plain text file: its lines, not its name
    text.write_text("a good film\nthe plot was dull\na good film\n")
    code, _, err = run(["distill", "sra", "--config", cfg, "--out", tmp_path / "sra",
                        "--stage1-epochs", "1", "--epochs", "1", "--unlabelled",
                        f"csv:{env / 'train.csv'},{text}", "--no-progress"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "sra" / "results.json").read_text())
    assert res["unlabelled_sentences"] == len(set(_tiny.sentences(80, 0)[0])) + 2


def test_max_len_beyond_the_teachers_positions(env, tmp_path, capsys):
    from transformers import AutoConfig

    positions = AutoConfig.from_pretrained(env / "bert").max_position_embeddings
    argv = ["finetune", "--teacher", env / "bert", "--task", f"csv:{env / 'train.csv'}",
            "--out", tmp_path / "ft", "--max-len", str(positions + 1), "--no-progress"]
    assert_user_error(*run(argv, capsys)[::2], f"has {positions} positions")
    assert not (tmp_path / "ft").exists()


def test_transformer_recipes_and_extract(env, tmp_path, capsys):
    task = f"csv:{env / 'train.csv'}"
    code, _, err = run(["finetune", "--teacher", env / "bert", "--task", task,
                        "--out", tmp_path / "ft", "--epochs", "1"] + FAST, capsys)
    assert code == 0, err
    teacher = tmp_path / "ft" / "teacher"
    size = ["--num-layers", "1", "--hidden-size", "8", "--num-heads", "2",
            "--intermediate-size", "16"]
    short = ["--no-augment", "--step1-epochs", "1", "--step2-epochs", "1", "--no-progress"]
    for argv in (["tinybert"], ["distill", "tinybert"], ["etd-distill"], ["distill", "etd"]):
        out = tmp_path / "-".join(argv)
        code, printed, err = run(argv + ["--teacher", teacher, "--task", task, "--out", out]
                                 + size + short, capsys)
        assert code == 0, (argv, err)
        assert (out / MARKER).is_file()
        where = printed.strip().splitlines()[-1].removeprefix("student: ")
        assert (Path(where) / "config.json").is_file(), printed  # the path it prints holds it
        step2 = json.loads((out / "step2" / "results.json").read_text())
        assert step2["config"]["alpha"] == 0.5  # the default mix step 2 trained with
    # both stages (general distillation on the task's sentences, then the task), the teacher
    # given as the `finetune --out` directory
    out = tmp_path / "all"
    code, _, err = run(["distill", "tinybert", "--stage", "all", "--teacher", tmp_path / "ft",
                        "--task", task, "--out", out, "--epochs", "1", "--max-len", "64"]
                       + size + short, capsys)  # the tiny teacher has 64 positions
    assert code == 0, err
    assert (out / "task" / "step2" / "student" / "config.json").is_file()
    res = json.loads((out / "results.json").read_text())
    assert res["general"]["steps"] > 0 and 0 <= res["test"]["accuracy"] <= 1
    out = tmp_path / "extract"
    code, _, err = run(["extract", "--teacher", env / "bert", "--task", f"text:{env / 'train.csv'}",
                        "--out", out, "--batch-size", "8", "--num-sentences", "20",
                        "--no-progress"] + size, capsys)
    assert code == 0, err
    from transformers import BertModel

    assert BertModel.from_pretrained(out).config.num_hidden_layers == 1
    too_wide = ["--num-layers", "1", "--hidden-size", "1024", "--num-heads", "2",
                "--intermediate-size", "16"]  # wider than the teacher: refused before scoring
    argv = ["extract", "--teacher", env / "bert", "--task", f"text:{env / 'train.csv'}",
            "--out", tmp_path / "wide", "--no-progress"] + too_wide
    assert_user_error(*run(argv, capsys)[::2], "hidden")
    before = snapshot(out)
    assert_user_error(*run(["extract", "--teacher", env / "bert", "--strategy", "rand",
                            "--out", out] + size, capsys)[::2], "--overwrite")
    assert snapshot(out) == before
    code, _, err = run(["extract", "--teacher", env / "bert", "--strategy", "rand", "--out", out,
                        "--overwrite"] + size, capsys)
    assert code == 0, err
    assert not (out / "importance.pt").exists()  # the whole directory was replaced
