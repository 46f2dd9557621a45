"""plot_segment_scores leaves the caller's matplotlib as it was: its backend, pyplot's figures.

It used to call ``matplotlib.use("Agg")`` (switching a notebook's or a window's backend to one
that shows nothing) and to make its figure with pyplot, which kept every figure drawn and not
closed (a warning after 20) and shares pyplot's global state with other threads.
"""

from __future__ import annotations

import threading
import warnings

import torch

from ctc_plugin.viz import plot_segment_scores, save_figure


def test_the_backend_a_caller_chose_is_kept():
    import matplotlib
    import matplotlib.pyplot as plt

    chosen = matplotlib.get_backend()
    plt.switch_backend("svg")  # a caller's choice (matplotlib.use), restored below
    try:
        mine = plt.figure()
        plot_segment_scores(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), [1.0])
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [mine.number]
    finally:
        plt.close("all")
        plt.switch_backend(chosen)


def test_figures_not_closed_are_not_kept_by_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "More than 20 figures have been opened"
        for _ in range(25):
            plot_segment_scores(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), [1.0])
    assert plt.get_fignums() == before


def test_two_threads_draw_and_save_their_own_figures(tmp_path):
    errors: list[BaseException] = []
    panels: dict[int, list[int]] = {1: [], 2: []}

    def draw(methods: int) -> None:
        try:
            for i in range(4):
                scores = {f"m{j}": torch.randn(2) for j in range(methods)}
                mask = torch.zeros(8, 8, dtype=torch.long)
                mask[4:] = 1
                figure = plot_segment_scores(torch.rand(3, 8, 8), mask, scores)
                panels[methods].append(len([a for a in figure.axes if a.get_title() in scores]))
                save_figure(figure, tmp_path / f"{methods}-{i}.png")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert panels == {1: [1] * 4, 2: [2] * 4}
    assert len(list(tmp_path.glob("*.png"))) == 8


def test_a_pyplot_figure_drawn_into_is_closed_by_save_figure(tmp_path):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2)
    plot_segment_scores(
        torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), [1.0], axes=list(axes)
    )
    save_figure(figure, tmp_path / "row.png")
    assert not plt.fignum_exists(figure.number)
