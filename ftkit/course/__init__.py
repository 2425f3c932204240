"""The course zone: what the notebooks show and the headless main job, on top of the core.

- `notebooks`: the series inside the package, its sections, a copy to work in;
- `runner` and `report`: the notebooks executed headless, and the main job's report.html;
- `plots`, `preview` and `widgets`: what a learner sees (matplotlib, HTML, ipywidgets);
- `check`: the exercises' checks; `doctor`: is this machine ready; `cli`: the `ftkit` command.

Nothing in the core imports from here (tests/test_structure.py checks it).
"""
