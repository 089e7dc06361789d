"""The board half of every deploy operation. Runs ON THE BOARD (Python >= 3.7, stdlib only).

Modules here import only each other (relative imports) and the standard library: the host
ships this folder as one zip archive (``deploy.remote.code_archive``) that ``boot.py`` installs
on the board once per version, as the top-level package ``deploy_board``. Each module is one
concern: ``wire`` (the channel), ``protocol`` (typed requests and replies, shared with the
host), ``files`` (crash-safe file primitives), ``layout`` (the app directory), ``facts``,
``releases`` (push, rollback, prune, verify), ``runs`` (run, attach, stop, pull, status) and
``main`` (dispatch). Nothing reads the environment at import: operations get a ``Wire`` with
explicit streams and home, so tests drive them on a temporary directory.
"""
