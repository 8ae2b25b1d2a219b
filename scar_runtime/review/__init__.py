"""``scar review OUT``: a local web page over a results folder, to check what the model did.

``server.py`` serves (standard library only); ``cases.py`` reads the folder (results.csv, the
stats files); ``index_page.py``, ``case_page.py`` and ``cohort_page.py`` render the pages, which
share ``layout.py``; ``safe_files.py`` keeps every request inside the folder; ``static_files.py``
names the packaged assets (NiiVue's single-file build, its licence, the pages' script and style).
"""
