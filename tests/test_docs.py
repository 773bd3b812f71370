"""The docs cannot drift from the code: every file and definition they name exists, every link
resolves, every generated part is what the code prints today, the claims computed in prose hold,
the TikZ diagram compiles (when pdflatex is installed) and matches its PNG, and the tour notebook
runs from start to finish."""

import ast
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from gpt2 import worked_example as we

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
generate = importlib.util.module_from_spec(_spec)  # docs/generate.py: the generated parts' markers
_spec.loader.exec_module(generate)
# The README is checked too: it is where a newcomer starts.
MARKDOWN = sorted(DOCS.glob("*.md")) + [p for p in [ROOT / "README.md"] if p.is_file()]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"^[\w.-]+(/[\w.-]+)*(/|\.(py|md|tex|png|ipynb|toml|sh|txt))$")
DEFINITION = re.compile(r"^([\w./-]+\.py)::([\w.]+)$")


def _prose(text):
    """Markdown without fenced blocks and HTML comments."""
    return re.sub(r"<!--.*?-->", "", FENCE.sub("", text), flags=re.DOTALL)


def _base(doc):
    return doc.parent


def _defines(path, qualname):
    """Whether the module at ``path`` defines ``qualname`` ("f", "Class", "Class.method",
    "CONSTANT"), read from its source without importing it."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for part in qualname.split("."):
        found = None
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part for t in node.targets):
                found = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == part:
                found = node
        if found is None:
            return False
        body = getattr(found, "body", [])
    return True


def _module_exists(name):
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


def references(doc):
    """(kind, reference) for every code span that names a path, a definition or a module."""
    refs = []
    for span in CODE_SPAN.findall(_prose(doc.read_text(encoding="utf-8"))):
        span = span.strip()
        if DEFINITION.match(span):
            refs.append(("definition", span))
        elif PATH.match(span) and "/" in span:
            refs.append(("path", span))
        elif span.startswith("python -m "):
            refs.append(("module", span.split()[2]))
    return refs


def _check(kind, ref):
    if kind == "path":
        return (ROOT / ref).exists()
    if kind == "module":
        return _module_exists(ref)
    file, qualname = DEFINITION.match(ref).groups()
    return (ROOT / file).is_file() and _defines(ROOT / file, qualname)


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.name)
def test_every_named_file_definition_and_module_exists(doc):
    missing = [ref for kind, ref in references(doc) if not _check(kind, ref)]
    assert not missing, f"{doc.name} names things that do not exist: {missing}"


def test_how_to_code_covers_the_source():
    refs = references(DOCS / "how-to-code.md")
    definitions = [r for k, r in refs if k == "definition"]
    assert len(definitions) >= 50, "how-to-code.md should point at the real definitions, as file::name"
    named = {r.split("::")[0] for _, r in refs}
    modules = [p for d in ("gpt2", "gpt2_kernels") for p in sorted((ROOT / d).glob("*.py")) if p.name != "__init__.py"]
    unmentioned = [str(p.relative_to(ROOT)) for p in modules if str(p.relative_to(ROOT)) not in named]
    assert not unmentioned, f"how-to-code.md does not visit {unmentioned}"


def test_the_checker_rejects_what_does_not_exist():
    assert _check("definition", "gpt2/model.py::GPT2.forward")
    assert _check("definition", "gpt2/config.py::SIZES")
    assert not _check("definition", "gpt2/model.py::GPT2.no_such_method")
    assert not _check("definition", "gpt2/nowhere.py::GPT2")
    assert not _check("path", "docs/missing.md")
    assert _check("module", "gpt2") and _check("module", "gpt2.viz") and not _check("module", "gpt2.nothing")


def _anchors(markdown):
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in FENCE.sub("", markdown).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def _notebook_markdown():
    nb = json.loads((DOCS / "tour.ipynb").read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("doc", [*MARKDOWN, DOCS / "tour.ipynb"], ids=lambda p: p.name)
def test_links_resolve(doc):
    text = _notebook_markdown() if doc.suffix == ".ipynb" else doc.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"^[a-z]+:", target):
            continue  # external
        path, _, anchor = target.partition("#")
        file = (_base(doc) / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.name)
def test_math_is_balanced(doc):
    """GitHub renders $...$ and ```math blocks; an odd $ in a paragraph breaks the rest of it."""
    text = doc.read_text(encoding="utf-8")
    assert text.count("```") % 2 == 0
    for paragraph in _prose(text).split("\n\n"):
        prose = CODE_SPAN.sub("", paragraph)
        assert prose.count("$") % 2 == 0, f"{doc.name}: unbalanced $ in: {paragraph[:120]!r}"


def test_generated_parts_are_what_the_code_prints():
    seen = {}
    for doc in MARKDOWN:
        text = doc.read_text(encoding="utf-8")
        for name in generate.parts(text):
            seen.setdefault(name, []).append(doc.name)
            assert generate.generated(text, name) == generate.GENERATORS[name](), (
                f"{doc.name}: generated part {name!r} is stale; run python docs/generate.py"
            )
    assert "worked-example.md" in seen.get("walkthrough", [])
    assert "theory.md" in seen.get("bpe", []) and "theory.md" in seen.get("sizes", [])
    assert all("theory.md" in seen.get(name, []) for name in ("decode", "training", "roofline"))
    assert "triton-primer.md" in seen.get("gelu_kernel", [])
    assert "README.md" in seen.get("memory", [])  # from bench/results/memory/memory.json


def test_primer_annotates_the_kernel_as_it_is():
    """Every code fragment the primer's GELU table explains occurs in the kernel's source today."""
    text = (DOCS / "triton-primer.md").read_text(encoding="utf-8")
    table = text.split("| Code | What it means |", 1)[1].split("\n\n", 1)[0]
    fragments = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    source = generate.kernel_source("gpt2_kernels/gelu.py", "_gelu_fwd_kernel")
    assert len(fragments) >= 10
    missing = [f for f in fragments if f not in source]
    assert not missing, f"the primer explains code the kernel no longer has: {missing}"


def test_generate_rewrites_a_stale_part(tmp_path, capsys):
    body = (DOCS / "worked-example.md").read_text(encoding="utf-8")
    stale = tmp_path / "doc.md"
    stale.write_text(body.replace(generate.generated(body, "walkthrough"), "old numbers\n"), encoding="utf-8")
    generate.main([str(stale)])
    assert stale.read_text(encoding="utf-8") == body
    assert "updated (walkthrough)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no generated part 'sizes'"):
        generate.generated(body, "sizes")


def test_numbers_in_the_prose_are_computed():
    """theory.md §9 and §11 quote numbers derived from the sizes; recompute them."""
    text = (DOCS / "theory.md").read_text(encoding="utf-8")
    cfg, n = we.model_sizes()["gpt2"]
    V, T, L, d = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
    block = 12 * d * d + 13 * d
    assert f"{V} \\cdot {d} + {T} \\cdot {d} + {L} \\cdot {block:,}".replace(",", "\\,") in text
    assert f"= {n:,}".replace(",", "\\,") in text
    assert f"{V * d / 1e6:.1f} million" in text and f"{V * d / n:.0%}" in text  # tied head saves
    assert f"{(n + V * d) / 1e6:.0f}M for small" in text  # head counted twice
    assert f"gives {(n - V * d - T * d) / 1e6:.0f}M for small" in text  # embeddings left out
    gpt1 = 40478 * d + 512 * d + L * block  # post-LN GPT-1: no final LayerNorm
    assert f"has {gpt1 / 1e6:.1f}M parameters" in text and f"other {(n - gpt1) / 1e6:.1f}M" in text


def test_diagram_shows_the_tokenizer_s_ids():
    from gpt2 import Tokenizer

    tex = (DOCS / "architecture.tex").read_text(encoding="utf-8")
    text = re.search(r"``(.+?)''", tex).group(1)
    assert str(Tokenizer().encode(text)) in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None,
                    reason="pdflatex/pdftoppm not installed")
def test_diagram_compiles_and_matches_its_png(tmp_path):
    import numpy as np
    from PIL import Image

    from gpt2.viz import render_architecture

    fresh = np.asarray(Image.open(render_architecture(tmp_path / "a.png")).convert("L"), dtype=float)
    shipped = np.asarray(Image.open(DOCS / "architecture.png").convert("L"), dtype=float)
    stale = "docs/architecture.png is stale: run python -m gpt2.viz architecture"
    assert abs(fresh.shape[0] - shipped.shape[0]) <= 0.01 * shipped.shape[0], stale
    assert abs(fresh.shape[1] - shipped.shape[1]) <= 0.01 * shipped.shape[1], stale
    h, w = min(fresh.shape[0], shipped.shape[0]), min(fresh.shape[1], shipped.shape[1])
    assert np.abs(fresh[:h, :w] - shipped[:h, :w]).mean() < 2.0, stale


def test_png_is_an_image_of_the_diagram():
    from PIL import Image

    img = Image.open(DOCS / "architecture.png")
    assert img.format == "PNG" and img.width > 800 and img.height > img.width


def test_tour_notebook_runs(tmp_path):
    """Execute docs/tour.ipynb on this machine (the CPU, through Triton's interpreter, unless a
    GPU is present) with a kernel that runs this interpreter, so it sees the same packages."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    spec = tmp_path / "kernels" / "tour"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tour test", "language": "python",
    }))
    km = KernelManager(kernel_name="tour", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    nb = nbformat.read(DOCS / "tour.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(DOCS)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "kernels: {'attention': 'triton', 'layernorm': 'triton', 'gelu': 'triton', 'loss': 'triton'}" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the heatmap was not shown"
    if not torch.cuda.is_available():
        assert "INTERPRETER (not a performance number)" in text


def test_theory_names_every_kernel():
    """Part II lists the @triton.jit functions of gpt2_kernels/; one added or renamed must be named."""
    text = (DOCS / "theory.md").read_text(encoding="utf-8")
    jitted = []
    for path in sorted((ROOT / "gpt2_kernels").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith(("_kernel", "_inner")) and any(
                    "jit" in ast.unparse(d) for d in node.decorator_list):
                jitted.append(node.name)
    assert len(jitted) >= 10
    missing = [k for k in jitted if f"`{k}`" not in text]
    assert not missing, f"theory.md does not name the kernels {missing}"


def test_initial_query_variance_in_the_prose():
    """theory.md §3: a query component of a fresh gpt2 has variance d * 0.02^2 (LayerNorm makes
    x-hat, not q, unit-variance), and the scaled scores that variance squared."""
    text = (DOCS / "theory.md").read_text(encoding="utf-8")
    cfg, _ = we.model_sizes()["gpt2"]
    var_q = cfg.n_embd * 0.02**2
    assert f"$d \\cdot 0.02^2 = {var_q:.2f}$ for $d = {cfg.n_embd}$" in text
    assert f"${var_q:.2f}^2 = {var_q ** 2:.3f}$" in text
    torch.manual_seed(0)  # and it is what the model's own initialisation gives
    from gpt2 import GPT2, GPT2Config
    model = GPT2(GPT2Config(n_layer=1, n_head=12, n_embd=cfg.n_embd, vocab_size=64, block_size=64))
    with torch.no_grad():
        x = model.transformer.h[0].ln_1(torch.randn(4, 64, cfg.n_embd))
        q = model.transformer.h[0].attn.c_attn(x)[..., :cfg.n_embd]
    assert abs(q.var().item() - var_q) < 0.03


def test_diagram_shows_c_attn_and_what_only_triton_fuses():
    tex = (DOCS / "architecture.tex").read_text(encoding="utf-8")
    assert re.search(r"Linear \$d \\to 3d\$ \\texttt\{c\\_attn\}", tex) and "split into Q, K, V" in tex
    assert r"\node[tri, below=3mm of fc, minimum height=6mm] (gelu) {GELU (tanh form)};" in tex
    assert re.search(r"Triton only: .*bias fused", tex)
    assert r"dims/.style={font=\small" in tex  # shape notes readable at the README's width


# ---- counts: what the docs say there are, against what the code holds ------------------------
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
NOUNS = r"(kernel functions|kernels|operations|ops|public functions|modules)\b"
# "four of its operations", "six public functions", "27 modules" (a figure right before its noun:
# "0.35 ms of kernels" or "Triton 3.9 the same kernels" are not counts)
COUNT = re.compile(r"\b(" + "|".join(NUMBER_WORDS[2:]) + r")\s+(?:[\w`.-]+\s+){0,2}?" + NOUNS
                   + r"|(?<![\d.])(\d+)\s+" + NOUNS, re.IGNORECASE)
PACKAGES = ("gpt2", "gpt2_kernels", "bench")
PACKAGE_NAME = re.compile(r"(?<![\w/.-])(gpt2_kernels|gpt2|bench)(?![\w-])")


def _modules(pkg):
    return len([p for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"])


def kernel_functions():
    """The ops gpt2_kernels exports, each from its own module ("one Triton op a file"): its
    public functions less the helpers (workspace_bytes)."""
    import gpt2_kernels

    return [n for n in gpt2_kernels.__all__ if getattr(gpt2_kernels, n).__module__ == f"gpt2_kernels.{n}"]


def code_counts(packages=PACKAGES):
    """The numbers a doc may put before each noun, from the code: "operations" and "ops" are the
    model's switchable ops (gpt2/switch.py::KERNELS), "kernels" and "kernel functions" the ops
    gpt2_kernels exports, "public functions" all it exports, "modules" the modules of the
    package the sentence names (of any of ours if it names none), counted from the tree: bench/'s
    count changes as bench is reorganised, so a doc that states it is checked, never pinned."""
    import gpt2_kernels
    from gpt2.switch import KERNELS

    return {"operations": {len(KERNELS)}, "ops": {len(KERNELS)}, "kernels": {len(kernel_functions())},
            "kernel functions": {len(kernel_functions())}, "public functions": {len(gpt2_kernels.__all__)},
            "modules": {_modules(pkg) for pkg in packages}}


def stated_counts(text):
    """(number, noun, the words around it, the packages its sentence names) for every
    "N ... kernels/operations/modules" in prose."""
    out = []
    prose = re.sub(r"\s+", " ", _prose(text))
    for m in COUNT.finditer(prose):
        word, noun = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        n = int(word) if word.isdigit() else NUMBER_WORDS.index(word.lower())
        start = max(prose.rfind(". ", 0, m.start()), prose.rfind("|", 0, m.start())) + 1
        ends = [i for i in (prose.find(". ", m.end()), prose.find("|", m.end())) if i != -1]
        sentence = prose[start:min(ends, default=len(prose))]
        out.append((n, noun.lower(), m.group(0), tuple(dict.fromkeys(PACKAGE_NAME.findall(sentence)))))
    return out


@pytest.mark.parametrize("doc", [*MARKDOWN, DOCS / "tour.ipynb"], ids=lambda p: p.name)
def test_every_count_of_kernels_ops_and_modules_is_true(doc):
    text = _notebook_markdown() if doc.suffix == ".ipynb" else doc.read_text(encoding="utf-8")
    wrong = []
    for n, noun, words, packages in stated_counts(text):
        true = code_counts(packages or PACKAGES)[noun]
        if n not in true:
            wrong.append(f"{words!r} (the code has {' or '.join(map(str, sorted(true)))})")
    assert not wrong, f"{doc.name} states wrong counts: {wrong}"


def test_the_count_check_catches_a_stale_count():
    assert stated_counts("replaces three operations with Triton kernels") == [
        (3, "operations", "three operations", ())]
    assert [n for n, *_ in stated_counts("exports the three public functions eagerly; the 8 modules")] == [3, 8]
    assert 3 not in code_counts()["operations"]
    # "kernels" counts the ops, not the helpers gpt2_kernels also exports
    assert "workspace_bytes" not in kernel_functions() and "attention" in kernel_functions()
    assert [n for n, *_ in stated_counts("the fourteen kernel functions")] == [14]
    # a module count is checked against the package its sentence names, and only that one
    (stated,) = stated_counts(f"`gpt2/` holds {_modules('gpt2')} modules. gpt2_kernels/ is small")
    assert stated[3] == ("gpt2",) and stated[0] in code_counts(stated[3])["modules"]
    (stated,) = stated_counts(f"gpt2_kernels/ holds {_modules('gpt2')} modules, bench/ more")
    assert stated[3] == ("gpt2_kernels", "bench")
    assert _modules("gpt2") not in code_counts(("gpt2_kernels",))["modules"]


def test_the_layout_row_lists_one_file_per_op():
    """The README's row for gpt2_kernels/ says "one Triton op a file (...)": those files are the
    exported ops' own modules, no more, no fewer."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| [gpt2_kernels/](gpt2_kernels/) |"))
    listed = re.search(r"one Triton op a file \(([^)]*)\)", row)
    assert listed, "README's layout row for gpt2_kernels/ no longer says 'one Triton op a file (...)'"
    assert set(re.findall(r"`(\w+)\.py`", listed.group(1))) == set(kernel_functions())


def test_the_layout_table_lists_every_module():
    """The README's layout table names each module of the model and kernel packages."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for pkg in ("gpt2", "gpt2_kernels"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| [{pkg}/]({pkg}/) |"))
        listed = set(re.findall(r"`(\w+\.py)`", row))
        modules = {p.name for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"}
        assert listed == modules, f"README's layout row for {pkg}/: missing {sorted(modules - listed)}, " \
                                  f"gone {sorted(listed - modules)}"
