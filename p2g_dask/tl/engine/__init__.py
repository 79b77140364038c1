"""The engine of every metacell-correlation tool (peak_to_gene, co_accessibility, their layers).

``plan`` (validated inputs, feature tables, per-chromosome index sets and local pairs) ->
``sums`` (any stacked membership summed in one pass per matrix) -> ``correlate`` (Pearson r,
t, p per chromosome and unit) -> tables; ``metacells`` builds the memberships and ``kernels``
holds the compiled loops they share.
"""
