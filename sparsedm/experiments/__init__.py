"""The paper's experiments: sweep a grid of methods x S x p x seeds (each run trained and evaluated by
sparsedm.eval), aggregate it into the paper's table, paired comparisons and plots, and the README's demo.

Layout: grid, sweep, parallel (runs side by side), shards (cluster slices and run locks), aggregate, paired,
comparisons, plots, sample_pictures, report, demo.
"""
