"""The docs (README.md and docs/*.md) are true to the code: every command they show composes with
its entry point's config and passes its checks (nothing trains), every relative link and anchor
resolves, and every table of measured figures says where its figures come from."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY_SCRIPTS = {
    "train.py": "train",
    "eval.py": "eval",
    "generate.py": "generate",
    "process.py": "process",
    "export.py": "export",
}
TOOLS = {"plot", "tokens", "shapes"}  # python -m wgpt.<tool> and python -m wgpt.tools.<tool>
COMPAT_RUN = ROOT / "tests" / "fixtures" / "compat-run"

# Commands that cannot be composed offline here, each with the reason. Keys: (page, a part of the command).
ALLOWED: dict[tuple[str, str], str] = {
    ("docs/distributed.md", "trainer.devices=8"): "eight GPUs: the device check counts this machine's",
    ("docs/distributed.md", "trainer.devices=[0,3]"): "GPUs 0 and 3: the device check looks for them",
}


@dataclass
class Command:
    page: str
    line: int
    text: str  # as the page shows it
    argv: list[str]  # the entry point (a script name, or "-m wgpt.tools.<tool>") and its arguments

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each ```bash / ```sh / ```shell block."""
    blocks, lines, start, inside = [], text.splitlines(), 0, False
    for n, line in enumerate(lines, 1):
        fence = line.strip().startswith("```")
        if fence and not inside:
            inside, start, body, shell = True, n + 1, [], line.strip()[3:].strip() in ("bash", "sh", "shell")
        elif fence and inside:
            inside = False
            if shell:
                blocks.append((start, "\n".join(body)))
        elif inside:
            body.append(line)
    return blocks


def simple_commands(line: str) -> list[list[str]]:
    """A shell line as bash splits it into simple commands (at &&, ||, ;, |, &, parentheses),
    each a list of words, comments and redirections dropped (``fill`` expands the words)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words, redirected = [], [], False
    for token in lexer:
        if redirected:  # the file of a redirection: not an argument
            redirected = False
        elif token in ("<", ">", ">>", ">&", "<<"):
            redirected = True
        elif token and set(token) <= set("&|;()"):
            commands.append(words)
            words = []
        else:
            words.append(token)
    return [c for c in [*commands, words] if c]


def entry_argv(words: list[str]) -> list[str] | None:
    """The entry point and arguments of a simple command, or None if it runs none of ours."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return None
    if words[0] == "torchrun":  # torchrun <its options> train.py <overrides>
        scripts = [i for i, w in enumerate(words) if Path(w).name in ENTRY_SCRIPTS]
        return [Path(words[scripts[0]]).name, *words[scripts[0] + 1 :]] if scripts else None
    if words[0] not in ("python", "python3") or len(words) < 2:
        return None
    if words[1] == "-m" and len(words) > 2:
        module = words[2]
        tool = module.removeprefix("wgpt.tools.").removeprefix("wgpt.")
        return [f"-m wgpt.tools.{tool}", *words[3:]] if module.startswith("wgpt.") and tool in TOOLS else None
    return [Path(words[1]).name, *words[2:]] if Path(words[1]).name in ENTRY_SCRIPTS else None


def shell_lines(block: str, start: int) -> list[tuple[int, str]]:
    """(line number, line) of a shell block, a line ending in a backslash joined with the next."""
    joined, pending, first = [], "", start
    for n, line in enumerate(block.splitlines(), start):
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    return joined + ([(first, pending)] if pending else [])


PLACEHOLDERS = {"run dir", "run", "sweep dir", "time", "ckpt", ".ckpt", "dir"}


def documented_commands() -> list[Command]:
    """Every command of ours in a shell block of the docs, placeholders as ``@name@`` (filled by ``fill``)."""
    found = []
    for doc in DOCS:
        page = str(doc.relative_to(ROOT))
        for start, block in shell_blocks(doc.read_text()):
            for n, line in shell_lines(block, start):
                marked = re.sub(r"<([a-z.][a-z. _-]*)>", lambda m: f"@{m[1].replace(' ', '_')}@", line)
                for words in simple_commands(marked):
                    argv = entry_argv(words)
                    if argv is not None:
                        found.append(Command(page, n, line.strip(), argv))
    return found


def fill(argv: list[str], places: dict[str, str]) -> list[str]:
    """The placeholders filled, then $VARIABLES and a leading ~ expanded as bash does (a ~ after
    ``key=`` is left: bash expands it only in assignments to shell variables)."""
    filled = [re.sub(r"@([a-z._]+)@", lambda m: places.get(m[1].replace("_", " "), "placeholder"), a) for a in argv]
    return [os.path.expanduser(w) if w.startswith("~") else w for w in map(os.path.expandvars, filled)]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """What the placeholders stand for: the fixture run dir (a run made by wgpt) and a sweep dir."""
    sweep = tmp_path_factory.mktemp("sweep")
    config = load("train", ["optim.lr=1e-3,3e-3"], multirun=True)
    OmegaConf.save(config, sweep / "multirun.yaml")
    checkpoint = next((COMPAT_RUN / "checkpoints").glob("best-*.ckpt"))
    return {
        "run dir": str(COMPAT_RUN),
        "run": COMPAT_RUN.name,
        "sweep dir": str(sweep),
        "time": sweep.name,
        "ckpt": str(checkpoint),
        ".ckpt": str(checkpoint),
        "dir": str(tmp_path_factory.mktemp("dir")),
    }


def load(config_name: str, overrides: list[str], multirun: bool):
    """The config as the entry point's @hydra.main composes it (the hydra node included)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    os.environ.setdefault("WGPT_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration(config_name, overrides, run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)


HYDRA_FLAGS = {"--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--info": 0, "--resolve": 0, "--help": 0, "-h": 0}


def overrides_and_mode(args: list[str]) -> tuple[list[str], bool]:
    overrides, multirun, skip = [], False, 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in HYDRA_FLAGS:
            skip = HYDRA_FLAGS[arg]
        else:
            overrides.append(arg)
    return overrides, multirun


def check_command(command: Command, places: dict[str, str]) -> None:
    """Compose ``command`` with its entry point's config and run the checks it runs before any
    heavy work; raises what the entry point would report."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from wgpt.core.compose import split_arguments
    from wgpt.core.report import missing_option
    from wgpt.core.sweep_check import check_sweep
    from wgpt.core.sweep_resume import resume_arguments
    from wgpt.core.validate import check_config, check_values
    from wgpt.util.errors import WgptError

    entry, *args = command.argv
    if entry.startswith("-m "):
        tool = entry.rpartition(".")[2]
        if tool == "plot":
            from wgpt.tools.plot import parse_args

            parse_args(args)  # argparse: exits on an unknown option
            return
        if args[:1] in (["-h"], ["--help"]):
            return
        overrides, words = split_arguments(args)
        if tool == "shapes" and words:
            raise WgptError(f"{words[0]!r} is not an override")
        entry, args = "train.py", overrides  # tokens and shapes compose conf/train.yaml
    if entry == "train.py":
        args = [places["sweep dir"] if a.startswith("resume=") and "auto" not in a else a for a in args]
        args = [f"resume={a}" if a == places["sweep dir"] else a for a in args]
        args = resume_arguments(["train.py", *args])[1:]
    overrides, multirun = overrides_and_mode(args)
    multirun = multirun or any(o.startswith("hparams_search=") for o in overrides)  # its hydra.mode: MULTIRUN
    if entry == "train.py" and not torch.cuda.is_available() and "trainer.accelerator=gpu" in overrides:
        # A GPU command where there is none: every check but the one for the GPU itself, on the CPU.
        overrides = [*overrides, "trainer.accelerator=cpu"]
    line = missing_option(overrides, ROOT / "conf")
    if line:
        raise WgptError(line)
    config = load(ENTRY_SCRIPTS[entry], overrides, multirun)
    if entry != "train.py":
        return  # composed (keys, options, values' syntax): the scripts check paths as they open them
    if multirun:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            check_sweep(config)
        return
    with open_dict(config):  # as Hydra's run_job does before the task starts
        config.hydra.runtime.output_dir = str(Path(places["dir"]) / "run")
    HydraConfig.instance().set_config(config)
    cfg = config.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    check_values(cfg)
    check_config(cfg)


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 50, "\n".join(map(str, COMMANDS))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.page}:{c.line}")
def test_every_documented_command_composes_and_passes_its_checks(command, places, monkeypatch, tmp_path):
    allowed = [reason for (page, part), reason in ALLOWED.items() if page == command.page and part in command.text]
    if allowed:
        pytest.skip(allowed[0])
    monkeypatch.setenv("HOME", str(tmp_path))  # $HOME/... in a command: a corpus the docs name, made here
    monkeypatch.setenv("WGPT_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "my-corpus").mkdir()
    for text in (tmp_path / "my-corpus" / "a.txt", tmp_path / "corpus.txt"):
        text.write_text("To be, or not to be, that is the question.\n" * 100)
    command = Command(command.page, command.line, command.text, fill(command.argv, places))
    try:
        check_command(command, places)
    except (Exception, SystemExit) as e:
        pytest.fail(f"{command}\n    -> {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def test_a_broken_command_fails_the_check(places, monkeypatch, tmp_path):
    """The check above can fail: a tilde after '=' (bash leaves it, Hydra cannot parse it), a
    misspelled key, an option that does not exist, a value out of range, a bad job in a sweep."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for text in [
        "python train.py data=local data.path=~/my-corpus",
        "python train.py optim.lrr=1e-3",
        "python train.py model=gpt3",
        "python train.py data.stride_ratio=1.5",
        "python train.py -m optim.lr=1e-3,oops",
        "python eval.py ckpt_path=x data=nope",
        "python -m wgpt.plot --nope",
    ]:
        (words,) = simple_commands(text)
        with pytest.raises((Exception, SystemExit)):
            check_command(Command("test", 0, text, fill(entry_argv(words), places)), places)


# --- links ---


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m[1] or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    inside = False
    for line in doc.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside and (m := re.match(r"^#{1,6} (.+)$", line)):
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(doc: Path) -> list[tuple[int, str]]:
    found, inside = [], False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside:
            line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
            found += [(n, target) for target in re.findall(r"\]\(([^)\s]+)\)", line)]
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(doc):
    broken = []
    for n, target in links(doc):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{doc.name}:{n}: {target} (no {file.relative_to(ROOT) if ROOT in file.parents else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{doc.name}:{n}: {target} (no heading #{anchor} in {file.name})")
    assert not broken, "\n".join(broken)


def test_the_docs_pages_are_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    assert [d.name for d in DOCS[1:] if d not in linked] == []


# --- provenance ---

MEASURED = re.compile(r"^Measured: \d{4}-\d{2}-\d{2}, .+, torch \d+\.\d+[^,]*, commit [0-9a-f]{7,40}: `[^`]+`")
# A cell holding a measured quantity: a speed, a time, a size, a share.
FIGURE = re.compile(r"\d\s?(tokens/s|ms|s|min|GiB|MiB|GB|%|x)\b|\b\d+\.\d{2,}\b")


def tables(doc: Path) -> list[tuple[int, list[str], list[str]]]:
    """(line, the table's lines, the 3 lines after it) of each Markdown table outside code blocks."""
    lines = doc.read_text().splitlines()
    found, n, inside = [], 0, False
    while n < len(lines):
        if lines[n].strip().startswith("```"):
            inside = not inside
        if not inside and lines[n].startswith("|") and n + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[n + 1]):
            start = n
            while n < len(lines) and lines[n].startswith("|"):
                n += 1
            found.append((start + 1, lines[start:n], lines[max(0, start - 2) : start] + lines[n : n + 3]))
            continue
        n += 1
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_of_measured_figures_says_where_they_come_from(doc):
    missing = []
    for line, table, around in tables(doc):
        body = table[2:]
        if any(FIGURE.search(cell) for row in body for cell in row.split("|")[1:-1] if "`" not in cell):
            if not any(MEASURED.match(a) for a in around):
                missing.append(f"{doc.name}:{line}: {table[0]}")
    assert not missing, "tables of figures without a 'Measured: ...' line (see docs/performance.md):\n" + "\n".join(
        missing
    )
