"""A Linear / Conv1d / Conv2d as one product Y = W M, which every sparse kernel computes in its own way.

    M = x as (in, N) for a Linear; im2col(x) as (in·kh·kw, B·L) for a groups=1 zero-padded conv (a Conv1d
    is a 1 x k Conv2d). W is the weight as (out, K).

`LinearProduct` and `ConvProduct` do the reshaping around a subclass's `product(m)`; `fits` says which
modules a sparse product computes exactly.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_geometry(conv: nn.Module):
    """(stride, padding, dilation) as 2-tuples, string padding resolved; a Conv1d is a 1 x k Conv2d."""
    padding = conv.padding
    if padding == "valid":
        padding = (0,) * len(conv.kernel_size)
    elif padding == "same":
        padding = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    if isinstance(conv, nn.Conv1d):
        return (1,) + tuple(conv.stride), (0,) + tuple(padding), (1,) + tuple(conv.dilation)
    return tuple(conv.stride), tuple(padding), tuple(conv.dilation)


def fits(module: nn.Module) -> bool:
    """Whether a sparse product computes `module` exactly: a Linear, or a groups=1 zero-padded Conv1d/Conv2d,
    in fp32/fp64 with a strided weight."""
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return False
    if module.weight.dtype not in (torch.float32, torch.float64) or module.weight.is_sparse:
        return False
    if isinstance(module, nn.Linear):
        return True
    if module.groups != 1 or module.padding_mode != "zeros":
        return False
    return not (module.padding == "same" and any(k % 2 == 0 for k in module.kernel_size))  # torch pads those unevenly


class LinearProduct(nn.Module):
    """y = W x + b through the subclass's `product(m)`, m = x as (in, N)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.reshape(-1, self.weight_shape[1]).t()  # (in, N), a view
        y = self.product(m).t()
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.weight_shape[0])


class ConvProduct(nn.Module):
    """A groups=1 zero-padded Conv1d/Conv2d as W · im2col(x) through the subclass's `product(m)`."""

    def set_geometry(self, conv: nn.Module) -> None:
        self.one_d = isinstance(conv, nn.Conv1d)
        self.kernel_size = (1,) + tuple(conv.kernel_size) if self.one_d else tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = conv_geometry(conv)

    def out_size(self, size: int, axis: int) -> int:
        k, p, s, d = self.kernel_size[axis], self.padding[axis], self.stride[axis], self.dilation[axis]
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """im2col(x) as (in·kh·kw, B·L)."""
        x4 = x[:, :, None] if self.one_d else x
        cols = F.unfold(x4, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width = x.shape[0], 1 if self.one_d else x.shape[2], x.shape[-1]
        # autograd folds dM back onto x through unfold's backward (col2im)
        y = self.product(self.columns(x))
        y = y.view(-1, batch, self.out_size(height, 0), self.out_size(width, 1)).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        y = y.contiguous()
        return y[:, :, 0] if self.one_d else y
