"""Every Python code block of the tutorials, the quickstart, the inputs and threads pages and the
README runs, and every figure a tutorial shows is the one its code makes.

Blocks run in page order, in one namespace per page, in a scratch folder. Blocks fenced as
```python run; ```text, ```bash and others are shown only (the one-line command of "Your model,
your photo" is run by a check of its own below).

Figures: every PNG a page's code writes into its folder must be embedded in the page from
``docs/img/tutorials/`` (``![...](../img/tutorials/NAME.png)``), and every image the page embeds
from there must have been written by that run. The run then publishes them: each figure is
re-encoded with 64 levels per channel (so the committed PNGs stay small) and written to
``docs/img/tutorials/`` when its content changed. Running this file therefore regenerates the
figures of the docs site; commit them with the tutorial that changed them.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
FIGURES = ROOT / "docs" / "img" / "tutorials"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
BASH = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
#: A published figure larger than this fails the test: lower its dpi or its size.
MAX_FIGURE_BYTES = 200_000


def python_blocks(page: Path) -> list[str]:
    """Return the Python blocks of a Markdown page, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


class _ExamplesMustRaise(ast.NodeTransformer):
    """Give every ``try``/``except`` of a page without an ``else`` one that fails.

    A page shows a refusal with ``try: ... except SomeError as error: print(error)``; without
    this, an example that stopped raising (the code learnt to handle the case) still ran, and the
    page went on claiming a refusal that no longer happens.
    """

    def visit_Try(self, node: ast.Try) -> ast.Try:
        self.generic_visit(node)
        if node.handlers and not node.orelse:
            caught = ", ".join(ast.unparse(h.type) for h in node.handlers if h.type is not None)
            message = f"line {node.lineno}: the example did not raise ({caught}) as the page says"
            node.orelse = ast.parse(f"raise AssertionError({message!r})").body
        return node


def compiled_block(block: str, name: str):
    """A page's block compiled, with every ``try`` required to raise (`_ExamplesMustRaise`)."""
    tree = ast.fix_missing_locations(_ExamplesMustRaise().visit(ast.parse(block)))
    return compile(tree, name, "exec")


def embedded_figures(page: Path) -> list[str]:
    """File names of the images ``page`` embeds from ``docs/img/tutorials/``."""
    names = []
    for source in IMAGE.findall(page.read_text(encoding="utf-8")):
        target = (page.parent / source).resolve()
        if target.parent == FIGURES:
            names.append(target.name)
    return names


def publish(figure: Path) -> Path:
    """Write ``figure`` to ``docs/img/tutorials/`` (64 levels per channel), if its content changed.

    Rounding each channel to a multiple of 4 (white stays white) changes no colour visibly and
    shrinks photographic figures by about 40 %; a palette of 256 colours would drop the rare
    colours, such as the blue half of a colour bar over a photo.
    """
    from PIL import Image

    with Image.open(figure) as opened:
        rgb = np.asarray(opened.convert("RGB"), dtype=np.float64)
    levels = np.clip(np.round(rgb / 4) * 4, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG", optimize=True)
    encoded = buffer.getvalue()
    target = FIGURES / figure.name
    assert len(encoded) <= MAX_FIGURE_BYTES, (
        f"{figure.name} is {len(encoded) // 1000} kB as published (limit "
        f"{MAX_FIGURE_BYTES // 1000} kB): save it with a lower dpi (80) or a smaller figsize"
    )
    if not target.is_file() or target.read_bytes() != encoded:
        FIGURES.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encoded)
    return target


def bash_commands(page: Path, command: str) -> list[list[str]]:
    """The arguments of each ``ctc-plugin COMMAND`` line of the page's ```bash blocks."""
    return [
        shlex.split(line.strip(), comments=True)[1:]
        for block in BASH.findall(page.read_text(encoding="utf-8"))
        for line in block.replace("\\\n", " ").splitlines()  # join continued lines
        if line.strip().startswith(f"ctc-plugin {command} ")
    ]


def explain_command(page: Path) -> list[str]:
    """The arguments of the page's one ``ctc-plugin explain`` command (in a ```bash block)."""
    lines = bash_commands(page, "explain")
    assert len(lines) == 1, f"{page.name}: expected one `ctc-plugin explain` line, got {lines}"
    return lines[0]


def check_your_model_command(page: Path, namespace: dict) -> None:
    """The page's one-line command computes the numbers its Python code computed."""
    import torch

    from ctc_plugin.cli import main

    argv = explain_command(page)
    option = {name: argv[argv.index(name) + 1] for name in ("--weights", "--save", "--out")}
    # the page ran with random weights (no weight file here): the command gets the same ones
    torch.save(namespace["network"].state_dict(), option["--weights"])
    assert main([*argv, "--no-progress"]) == 0
    assert Path(option["--out"]).is_file()
    with np.load(option["--save"], allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["image0/feature_mask"], namespace["mask"][0, 0])
        assert int(saved["image0/target"]) == namespace["target"]
        np.testing.assert_allclose(
            saved["image0/ctc/scores"], namespace["scores"].scores[0], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            saved["image0/integrative-cam/attribution"], namespace["cam"][0, 0], atol=1e-5
        )


def check_modern_cnns(_page: Path, namespace: dict) -> None:
    """The refused example is refused as the page says, and the registration it names works;
    ConvNeXt has biases to share, so its two modes differ."""
    import torch

    from ctc_plugin import CTC
    from ctc_plugin.ctc.operations import register_rule

    refusal = namespace.get("refusal")
    assert refusal is not None, "the page's refused example ran without a refusal"
    assert "torch.atan in 0 (Arctan)" in str(refusal) and "register_rule" in str(refusal)
    model, image, grid = namespace["model"], namespace["image"], namespace["grid"]
    with register_rule(torch.atan, like=torch.tanh):
        _, scores = CTC(model).attribute(
            image, target=0, feature_mask=grid, return_feature_scores=True
        )
    torch.testing.assert_close(scores.scores.sum(1), model(image)[:, 0].detach())
    proportional, linear = namespace["shared"].scores, namespace["linear"].scores
    assert (proportional - linear).abs().max() > 1e-3 * proportional.abs().max()


def check_dataset_run_command(page: Path, _namespace: dict) -> None:
    """The page's command writing ``--out run`` is the run its Python twin made: as the page says,
    started on that folder it finds the run finished and computes nothing (a command of other
    options, or other defaults than ``explain_dataset``'s, would be refused)."""
    from ctc_plugin.cli import main

    commands = [argv for argv in bash_commands(page, "explain-dataset") if "run" in argv]
    assert len(commands) == 1, f"{page.name}: expected one command with --out run: {commands}"
    argv = commands[0]
    assert argv[argv.index("--out") + 1] == "run", argv
    shards = sorted(Path("run").rglob("shard-*"))
    assert shards, "the page's Python run wrote no shard"
    written = {path: path.stat().st_mtime_ns for path in shards}
    assert main([*argv, "--no-progress"]) == 0
    assert {
        path: path.stat().st_mtime_ns for path in sorted(Path("run").rglob("shard-*"))
    } == written


#: Checks that run after a page's blocks, in its folder, with its namespace.
AFTER_PAGE: dict[str, Callable[[Path, dict], None]] = {
    "your-model-your-photo": check_your_model_command,
    "modern-cnns": check_modern_cnns,
    "dataset-runs": check_dataset_run_command,
}

PAGES = sorted(TUTORIALS.glob("*.md")) + [
    ROOT / "docs" / "quickstart.md",
    ROOT / "docs" / "inputs.md",
    ROOT / "docs" / "threads.md",
    ROOT / "README.md",
]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no ```python block to run"
    from ctc_plugin.cam import BLOCK_RESHAPES

    namespace: dict = {"__name__": f"tutorial_{page.stem}"}
    cwd = os.getcwd()
    registered = dict(BLOCK_RESHAPES)  # a page's registration must not reach later tests
    os.chdir(tmp_path)  # tutorials write their figures into a scratch folder
    try:
        for index, block in enumerate(blocks):
            code = compiled_block(block, f"{page.name}[block {index}]")
            exec(code, namespace)  # noqa: S102 - executing our own documentation is the test
        written = sorted(path.name for path in tmp_path.glob("*.png"))
        shown = embedded_figures(page)
        assert sorted(set(shown)) == written, (
            f"{page.name}: its code wrote the figures {written} and the page shows "
            f"{sorted(set(shown))} from docs/img/tutorials/; embed each figure it writes, as "
            "![what it shows](../img/tutorials/NAME.png), and embed no figure it does not write"
        )
        for name in written:
            publish(tmp_path / name)
        if page.stem in AFTER_PAGE:
            AFTER_PAGE[page.stem](page, namespace)
    finally:
        os.chdir(cwd)
        BLOCK_RESHAPES.clear()
        BLOCK_RESHAPES.update(registered)
        import matplotlib.pyplot as plt

        plt.close("all")


def test_figures_belong_to_one_page() -> None:
    """Each published figure is embedded by exactly one page, and no stale figure is left."""
    owners: dict[str, list[str]] = {}
    for page in PAGES:
        for name in dict.fromkeys(embedded_figures(page)):
            owners.setdefault(name, []).append(page.name)
    shared = {name: pages for name, pages in owners.items() if len(pages) > 1}
    assert not shared, f"figures written by several pages (give each its own name): {shared}"
    assert owners, "no page embeds a figure from docs/img/tutorials/"
    stale = sorted(path.name for path in FIGURES.glob("*") if path.name not in owners)
    assert not stale, f"docs/img/tutorials/ holds figures no page embeds; delete them: {stale}"
