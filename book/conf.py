"""Sphinx configuration of the course website (`make book`; book/build.py stages the sources).

Sphinx + MyST-NB + sphinx-book-theme: the engine and theme of Jupyter Book 1, configured directly
(docs/WEBSITE.md says why). The notebooks are rendered with the outputs they already hold: the site
never executes a notebook.
"""

project = "White-blood-cell classification with Keras"
author = "The WBC course authors"
copyright = "the WBC course authors, MIT licence"  # noqa: A001 (Sphinx's name for it)

root_doc = "README"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# MyST: GitHub-style heading anchors, so README links such as docs/ARCHITECTURE.md#who-owns-what resolve.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

# MyST-NB: render the stored outputs; never execute (the executed copies come from `make run`).
nb_execution_mode = "off"
nb_merge_streams = True
# tqdm progress bars are stored as widget views with a text fallback: show the text, and load no
# widget JavaScript from a CDN (the site must work offline and log no console error).
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_ipywidgets_js = {}

html_theme = "sphinx_book_theme"
html_title = "WBC classification with Keras"
html_extra_path = ["extra"]  # index.html: the site root opens the README
html_copy_source = False
html_show_sourcelink = False
# The theme reads its colour mode from here; left unset, its script logs "Got invalid theme mode" as an error.
html_context = {"default_mode": "auto"}
html_theme_options = {
    "repository_url": "https://github.com/wbc-course/wbc-course",
    "use_repository_button": True,
    "home_page_in_toc": True,
    "show_toc_level": 2,
}

# docs/RELIABILITY.md opens with a level-2 heading (it reads as a section on GitHub): not an error here.
suppress_warnings = ["myst.header"]
