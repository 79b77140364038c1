"""The check registry: every table schema and value check of the package, in one place.

As sgkit's ``variables.py``: each public entry point validates its inputs here once, before any
graph is built, so a wrong input fails at once with the argument's name, the value and the fix,
and no check is written twice. Sections:

- Tables: the columns (and meaning) of the links table, co-accessibility pairs, genes, exons and
  fragments, and ``require_columns`` to check a table against one.
- Counts: cells x features matrices (finite, non-negative; CSR invariants of a block).
- Parameters: scalar arguments (positive distances, metacell memberships, cut-offs).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
