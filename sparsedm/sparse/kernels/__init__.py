"""Kernels: sparse products of masked Linear / Conv1d / Conv2d layers, for sampling and for training.

measure.py          the one measure-choose-cache mechanism: time candidates per layer, keep the fastest, cache it
layers.py           a Linear / Conv as one product W · M (im2col for a conv): the geometry both uses share
sampling.py         inference: CSR copies of sparse weights, swapped in where measured faster
products.py         training: a mask's pattern and the ways of computing the three products of a layer
compact_layers.py   training: layers that keep only their active weights (compact storage's layers)
compact_choice.py   training: which plan each compact layer takes, forced or measured
"""
