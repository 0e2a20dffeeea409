"""The README's checkable claims are true: its length, its links, its two commands, the commands and flags it
names, the defaults it states and what it says about the install script. No model is loaded (< 5 s)."""

from __future__ import annotations

import ast
import re
import shlex
import unicodedata
from pathlib import Path

from medvlsam2.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "MedVLSAM2Slicer"
README = REPO / "README.md"
RESULTS = REPO / "Testing" / "Benchmarks" / "RESULTS.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Sections that left the README, and where each went: the README must link every one of them.
MOVED = {
    "install details": "docs/install.md",
    "command line": "docs/cli.md",
    "CT input": "docs/cli.md#ct-input",
    "interactive sessions (engine API)": "docs/engine-api.md",
    "what the model is": "docs/models-reference.md#what-the-model-is-and-what-is-reconstructed",
    "weights and checkpoints": "docs/models-reference.md#weights-and-checkpoints",
    "released models on your CT": "docs/models.md",
    "Med3DVLM": "docs/models.md#med3dvlm-for-questions-and-reports-on-your-ct",
    "server and client": "docs/server.md",
    "Slicer module": "docs/slicer.md",
    "data": "docs/data.md",
    "training and the demo weights": "docs/training-reference.md",
    "training a site's model": "docs/training-reference.md#training-a-sites-model-m3d-seg--m3d-cap--own-data-from-released-parts",
    "evaluation": "docs/evaluation.md",
    "benchmarks": "docs/evaluation.md#benchmarks",
    "results": "Testing/Benchmarks/RESULTS.md",
    "layout and contracts": "docs/ARCHITECTURE.md",
}


def readme() -> str:
    return README.read_text(encoding="utf-8")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    body = FENCE.sub("", path.read_text(encoding="utf-8"))
    for line in body.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    body = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(body) if not re.match(r"[a-z]+:", t)]


def check_links(path: Path) -> list[str]:
    """The links of ``path`` that point at a missing file or a missing heading."""
    bad = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading with that anchor in {dest.name})")
    return bad


def test_slug_follows_github():
    assert slug("Training a site's model: M3D-Seg + M3D-Cap (+ own data) from released parts") == \
        "training-a-sites-model-m3d-seg--m3d-cap--own-data-from-released-parts"
    assert slug("Session (`medvlsam2.session.Session`)") == "session-medvlsam2sessionsession"


def test_readme_is_under_200_lines():
    assert len(readme().splitlines()) < 200


def test_status_comes_before_install_and_examples():
    headings = [h for h in re.findall(r"^## (.*)$", FENCE.sub("", readme()), re.M)]
    assert headings[0] == "Status", headings
    for claim in ("never run inside the Slicer application", "only with a MedVL-SAM2 bundle", "(goal 0.75, missed)"):
        assert claim in " ".join(readme().split()), claim


def test_every_relative_link_resolves():
    files = [README, RESULTS]
    files += sorted({(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)
                     if t.partition("#")[0].endswith(".md")})
    bad = {f.name: check_links(f) for f in files if f.exists()}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_every_moved_section_is_linked():
    links = set(relative_links(README))
    missing = {what: where for what, where in MOVED.items() if where not in links}
    assert not missing, f"the README does not link these moved sections: {missing}"


def test_the_two_commands_are_what_make_and_ci_run():
    text = readme()
    assert "make run" in text and "make test" in text
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run:.*\n\t\$\(VENV\)/medvlsam2 demo -o outputs/demo$", makefile, re.M)
    assert re.search(r"^test:.*\n\tbash scripts/bootstrap\.sh --voxtell\n\t\$\(VENV\)/python -m pytest -q$", makefile, re.M)
    assert "`medvlsam2 demo -o outputs/demo`" in text and "`python -m pytest -q`" in text
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert "make test" in ci


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def _check_command_lines(text: str) -> int:
    """Every ``medvlsam2 COMMAND --flag`` line of the bash blocks names a real command and real flags."""
    subs = _subcommands()
    commands = 0
    for lang, block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines() if lang == "bash" else ():
            words = shlex.split(line.split("#")[0])
            if words and words[0].endswith("medvlsam2"):
                assert words[1] in subs, line
                flags = {o for a in subs[words[1]]._actions for o in a.option_strings}
                choices = next((a.choices for a in subs[words[1]]._actions if isinstance(a.choices, dict)), {})
                for word in words[2:]:
                    if word in choices:  # a sub-sub-command (`weights import ...`): its own flags count too
                        flags |= {o for a in choices[word]._actions for o in a.option_strings}
                used = {w.split("=")[0] for w in words[2:] if w.startswith("-")}
                assert used <= flags, (line, used - flags)
                commands += 1
    return commands


def test_commands_in_the_linked_docs_exist():
    docs = sorted({(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)
                   if t.startswith("docs/") and t.partition("#")[0].endswith(".md")})
    assert sum(_check_command_lines(d.read_text(encoding="utf-8")) for d in docs) >= 10


def test_commands_and_flags_named_in_the_readme_exist():
    subs = _subcommands()
    text = readme()
    others = re.search(r"The other commands \(([^)]*)\)", text)
    assert others, "the README no longer lists the other commands"
    named = re.findall(r"`(\w+)`", others.group(1))
    assert named and set(named) <= set(subs), set(named) - set(subs)
    assert _check_command_lines(text), "the README shows no medvlsam2 command"
    segment_flags = {o for a in subs["segment"]._actions for o in a.option_strings}
    for flag in ("--point", "--box"):
        assert f"`{flag} " in text and flag in segment_flags, flag


def test_stated_defaults_match_the_parsers():
    subs = _subcommands()
    table = re.search(r"\| command \| `--model` \| `--device` \| `--precision` \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", readme())
    assert table, "the README's defaults table is missing"
    checked = 0
    for row in table.group(1).splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        model, device, precision = cells[1], cells[2].strip("`"), cells[3].strip("`")
        for command in re.findall(r"`(\w+)`", cells[0]):
            defaults = {a.dest: a.default for a in subs[command]._actions}
            if model == "the demo weights":
                assert defaults["model"] is None, command  # None: cli.common loads the demo bundle
            else:
                assert defaults["model"] == model.split("`")[1], command
            assert defaults["device"] == device, command
            assert defaults["precision"] == precision, command
            checked += 1
    assert checked >= 7


def test_none_means_the_demo_weights():
    source = (ENGINE / "medvlsam2" / "cli" / "common.py").read_text(encoding="utf-8")
    assert 'spec = args.model or str(demo_weights_folder())' in source
    assert "spec = args.model or str(demo_weights_folder())" in (ENGINE / "medvlsam2" / "cli" / "serve.py").read_text()


def test_what_the_readme_says_about_installing_torch():
    text = " ".join(readme().split())
    script = (REPO / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    cpu_index = "download.pytorch.org/whl/cpu" in script
    if not cpu_index:
        assert not re.search(r"installs a CPU build of PyTorch", text, re.I)
        assert "on Linux that is a CUDA build" in text
    assert re.search(r'python -c "import torch".*\n.*--gpu', script), "torch is installed only when absent"


def test_the_extensions_manager_is_not_offered_as_an_install_route():
    for sentence in re.split(r"(?<=[.;])\s", " ".join(readme().split())):
        if "Extensions Manager" in sentence or "Extensions Index" in sentence:
            assert "not" in sentence, sentence


def test_demo_weights_size_as_stated():
    size_mib = (REPO / "Resources" / "DemoWeights" / "model.safetensors").stat().st_size / 2**20
    stated = float(re.search(r"`Resources/DemoWeights/`, (\d+) MiB", readme()).group(1))
    assert abs(size_mib - stated) < 1.0, size_mib


def _module_file(module: str, root: Path = ENGINE) -> Path:
    path = root / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _resolve(module: str, source: str | None, level: int, is_package: bool) -> str:
    """The absolute module name of ``from <dots><source> import ...`` written in ``module``."""
    if not level:
        return source or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([source] if source else []))


def _defined_names(module: str, root: Path = ENGINE) -> set[str]:
    tree = ast.parse(_module_file(module, root).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _methods(module: str, cls: str, root: Path = ENGINE) -> set[str]:
    """Methods of ``cls`` as ``module`` exposes it: defined there or re-exported from a package module, with
    those of base classes the package defines."""
    path = _module_file(module, root)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = {a.asname or a.name: (_resolve(module, n.module, n.level, path.name == "__init__.py"), a.name)
               for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        source, name = imports[cls]  # KeyError: the module does not expose cls
        return _methods(source, name, root)
    names = {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in imports and imports[base.id][0].startswith("medvlsam2"):
            names |= _methods(*imports[base.id], root)
    return names


def test_method_lookup_follows_packages_and_bases(tmp_path):
    pkg = tmp_path / "medvlsam2" / "s"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .core import Session\n")
    (pkg / "core.py").write_text("from .base import Base\nclass Session(Base):\n    def ask(self): ...\n")
    (pkg / "base.py").write_text("class Base:\n    def close(self): ...\n")
    assert _methods("medvlsam2.s", "Session", tmp_path) == {"ask", "close"}


def test_python_example_names_exist():
    block = next(b for lang, b in FENCE.findall(readme()) if lang == "python")
    tree = ast.parse(block)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert {a.name for a in node.names} <= _defined_names(node.module), node.module
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "session"}
    assert calls, "the example calls no Session method"
    assert calls <= _methods("medvlsam2.session", "Session"), calls - _methods("medvlsam2.session", "Session")
    result_fields = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                     and isinstance(n.value, ast.Name) and n.value.id in ("result", "r", "miss")}
    results = (ENGINE / "medvlsam2" / "results.py").read_text(encoding="utf-8")
    for name in result_fields:
        assert re.search(rf"^    {name}: ", results, re.M), name


def test_server_doc_states_the_serve_defaults():
    """docs/server.md (linked from the README) lists the limits of `medvlsam2 serve` with their defaults."""
    import inspect

    from medvlsam2 import protocol
    from medvlsam2.client import Client

    doc = (REPO / "docs" / "server.md").read_text(encoding="utf-8")
    defaults = {o: a.default for a in _subcommands()["serve"]._actions for o in a.option_strings}
    stated = re.findall(r"`(--[a-z-]+)` \[([0-9^]+)\]", doc) + re.findall(r"`(--[a-z-]+)` \(default ([0-9]+) s\)", doc)
    assert len(stated) >= 11, stated
    for flag, value in stated:
        base, _, power = value.partition("^")
        assert defaults[flag] == int(base) ** int(power or 1), flag
    assert "after every 5 silent seconds" in " ".join(doc.split()) and protocol.PING_S == 5
    silence = inspect.signature(Client).parameters["stream_silence_s"].default
    assert f"`stream_silence_s` (default {silence:g} s)" in " ".join(doc.split())


def test_data_doc_states_the_generator_version_and_labels():
    """docs/data.md names the phantom generator's version and label values; a stale one misleads trained-weight users."""
    doc = " ".join((REPO / "docs" / "data.md").read_text(encoding="utf-8").split())
    tree = ast.parse((ENGINE / "medvlsam2" / "data" / "synthetic.py").read_text(encoding="utf-8"))
    values = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
              if isinstance(t, ast.Name) and t.id in ("GENERATOR_VERSION", "ORGANS")}
    assert f"`GENERATOR_VERSION` (now {values['GENERATOR_VERSION']})" in doc
    stated = ", ".join(f"{k} {v}" for k, v in values["ORGANS"].items())
    assert f"(`ORGANS`: {stated})" in doc
