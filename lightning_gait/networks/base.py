"""The network contract: what learning rules, inverses, the penalty and diagnostics need.

A network is a chain of ``L`` layers, ``l = 0 .. L-1`` (layer ``l + 1`` in the paper's
1-based notation). Layer ``l`` reads its input ``x_l = select_input(l, a_{l-1})`` from
the previous layer's output (``a_{-1}`` is the network's prepared input), applies its
affine map ``z_l = F_l(x_l)`` (a module in ``layers`` with a ``weight`` and a ``bias``)
and an invertible elementwise activation, ``a_l = f_l(z_l)``. Activations may have any
shape with the batch first: ``(N, n)`` for dense layers, ``(N, C, H, W)`` for
convolutions. The class logits are the first ``num_classes`` entries of the flattened
output ``a_{L-1}``.

A subclass of :class:`InvertibleNetwork` provides:

* ``layers`` (an ``nn.ModuleList``, input to output; its parameter names are the
  checkpoint names), ``num_classes``, and the activations: either the attributes
  ``activation`` (after every hidden layer) and ``output_activation`` (after the last),
  or its own :meth:`activation_of`; :meth:`reset_parameters` if orthogonal weights and
  zero biases are not the right start;
* optionally :meth:`prepare_input` (shape checks, flattening) and, for a layer that
  reads only part of the previous output, :meth:`select_input` with its adjoint
  :meth:`expand_to_previous` (the unread entries are auxiliary units: their target is
  their own value, their error zero).

Everything else comes from the base class and the layer registry of
:mod:`lightning_gait.networks.layers`, which gives each layer type its exact inverse and
its matrix view (for the orthogonality penalty, feedback alignment and diagnostics): a
new layer type registers there and needs no change in the rules.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..activations import InvertibleActivation
from .layers import MatrixView, layer_inverse, matrix_view
from .orthogonal import ORTHOGONAL_MAPS, computed_weights, make_orthogonal, orthogonal_parametrization, trained_weight

__all__ = ["ForwardTrace", "InvertibleNetwork"]


@dataclass
class ForwardTrace:
    """Everything a learning rule keeps from one forward pass.

    ``inputs[l]`` is what layer ``l`` (0-based) read, ``pre[l]`` its pre-activation ``z``
    and ``post[l]`` its output ``a``. With ``local=True`` each layer's input is detached,
    so that autograd through ``post[l]`` reaches only layer ``l``'s own weight and bias.
    """

    inputs: List[Tensor]
    pre: List[Tensor]
    post: List[Tensor]

    @property
    def output(self) -> Tensor:
        return self.post[-1]


class InvertibleNetwork(nn.Module, ABC):
    """Base class of every network a :class:`~lightning_gait.rules.LocalLearningRule` trains.

    Subclasses set ``self.layers`` (an ``nn.ModuleList``), ``self.num_classes`` and the
    activations (see the module docstring for the contract).
    """

    layers: nn.ModuleList
    num_classes: int
    #: the activation after every hidden layer, and after the output layer
    activation: InvertibleActivation
    output_activation: InvertibleActivation

    # ------------------------------------------------------------------ to implement or keep
    def activation_of(self, index: int) -> InvertibleActivation:
        """The elementwise activation after layer ``index``: ``activation`` after a hidden
        layer, ``output_activation`` (the identity for a linear output) after the last."""
        name = "output_activation" if index == self.num_layers - 1 else "activation"
        activation = getattr(self, name, None)
        if activation is None:
            raise NotImplementedError(
                f"{type(self).__name__} sets no `{name}`: set `self.activation` and `self.output_activation` "
                f"(e.g. lightning_gait.activations.build_activation('leaky_relu') and Identity()) in __init__, "
                f"or override `activation_of(index)`"
            )
        return activation

    def reset_parameters(self) -> None:
        """(Semi-)orthogonal weights (``nn.init.orthogonal_``, trailing dimensions
        flattened) and zero biases for every layer (a layer may have ``bias = None``); a
        layer that is orthogonal by construction restarts from a new orthogonal matrix."""
        for layer in self.layers:
            if parametrize.is_parametrized(layer, "weight"):
                start = torch.empty_like(layer.weight)
                nn.init.orthogonal_(start)
                with torch.no_grad():
                    layer.weight = start  # the parametrization's right inverse takes it as its start
            else:
                nn.init.orthogonal_(layer.weight)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)

    def _init_orthogonal(self, orthogonal: Optional[str], scaled: bool) -> None:
        """The constructors' ``orthogonal`` and ``orthogonal_scale`` arguments."""
        self.orthogonal, self.orthogonal_scale = orthogonal, bool(scaled)
        if orthogonal is None:
            if scaled:
                raise ValueError("orthogonal_scale=True needs orthogonal layers: set orthogonal='cayley' too")
            return
        if orthogonal not in ORTHOGONAL_MAPS:
            raise ValueError(f"orthogonal={orthogonal!r} is not known; choose None or one of {ORTHOGONAL_MAPS}")
        self.make_orthogonal(orthogonal, scaled=scaled)

    def make_orthogonal(self, orthogonal_map: str = "cayley", *, scaled: bool = False,
                        indices: Optional[Sequence[int]] = None) -> "InvertibleNetwork":
        """Make the square layers orthogonal by construction (:mod:`.orthogonal`); returns ``self``.

        ``indices`` (default: every square layer after the first) are the layers to
        parametrize. Their inverse becomes the transpose and the orthogonality penalty
        leaves them out.
        """
        for i in self.square_layer_indices if indices is None else indices:
            make_orthogonal(self.layers[i], orthogonal_map, scaled=scaled)
        return self

    def prepare_input(self, x: Tensor) -> Tensor:
        """The network's input from a batch as the DataModule gives it (checks its shape)."""
        return x

    def select_input(self, index: int, previous: Tensor) -> Tensor:
        """What layer ``index`` reads from the previous layer's output ``a_{index-1}``."""
        return previous

    def expand_to_previous(self, index: int, value: Tensor, previous: Tensor, *, difference: bool) -> Tensor:
        """Map a target of layer ``index``'s input back onto the whole previous output.

        ``value`` is a target (``difference=False``) or a target difference ``t - a``
        (``difference=True``) for ``select_input(index, previous)``; entries of
        ``previous`` that layer ``index`` does not read get their own value as target
        (difference zero). The default, for layers that read everything, returns ``value``.
        """
        return value

    # ------------------------------------------------------------------ provided
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_parameters(self) -> List[Tuple[Tensor, Optional[Tensor]]]:
        """``(weight, bias)`` of every layer, input to output: what each local loss updates
        (``bias`` is ``None`` for a layer without one). For a layer that is orthogonal by
        construction ``weight`` is the parameter the optimizer trains
        (:func:`~lightning_gait.networks.orthogonal.trained_weight`), not the matrix
        computed from it."""
        return [(trained_weight(layer), getattr(layer, "bias", None)) for layer in self.layers]

    def pair_gradients(self, objective: Tensor, *, retain_graph: bool = False) -> List[Tuple[Tensor, Optional[Tensor]]]:
        """``(d objective / d weight, d objective / d bias)`` per layer, input to output,
        by one :func:`torch.autograd.grad` (``.grad`` untouched); zeros for a parameter
        the objective does not reach, ``None`` where a layer has no bias. With
        ``retain_graph`` the objective's graph stays for a later backward."""
        pairs = self.layer_parameters()
        params = [p for pair in pairs for p in pair if p is not None]
        grads = iter(torch.autograd.grad(objective, params, allow_unused=True, retain_graph=retain_graph))
        out = []
        for pair in pairs:
            row = []
            for p in pair:
                if p is None:
                    row.append(None)
                    continue
                g = next(grads)
                row.append(torch.zeros_like(p) if g is None else g)
            out.append((row[0], row[1]))
        return out

    def update_objective(self, updates: List[Tuple[Tensor, Optional[Tensor]]]) -> Tensor:
        """A scalar whose gradient with respect to each layer's weight and bias is ``updates``.

        ``updates`` holds one ``(dW, db)`` per layer (``db`` ``None`` where there is no
        bias; tensors without a graph): the objective is ``sum_l <W_l, dW_l> + <b_l, db_l>``,
        so that one backward of it installs every update at the cost of a copy. For a layer
        that is orthogonal by construction ``W_l`` is the matrix computed from the trained
        parameter, and the backward takes ``dW_l`` on to that parameter by the chain rule.
        """
        total = None
        for layer, (dw, db) in zip(self.layers, updates):
            term = (layer.weight * dw).sum()
            bias = getattr(layer, "bias", None)
            if bias is not None and db is not None:
                term = term + (bias * db).sum()
            total = term if total is None else total + term
        return total

    def view(self, index: int) -> MatrixView:
        """Layer ``index``'s affine map as a matrix on rows (:func:`~lightning_gait.networks.layers.matrix_view`)."""
        return matrix_view(self.layers[index])

    def is_square(self, index: int) -> bool:
        return self.view(index).is_square

    @property
    def square_layer_indices(self) -> List[int]:
        """Layers after the first whose matrix is square: the orthogonality penalty's terms."""
        return [i for i in range(1, self.num_layers) if self.is_square(i)]

    @property
    def invertible(self) -> bool:
        """True when every layer after the first can be inverted (GAIT-prop and TP need it)."""
        return self.num_layers > 1 and self.square_layer_indices == list(range(1, self.num_layers))

    @property
    def inverted_layer_indices(self) -> List[int]:
        """Layers whose inverse target propagation uses: all but the first."""
        return list(range(1, self.num_layers)) if self.invertible else []

    @property
    def orthogonal_layer_indices(self) -> List[int]:
        """Layers whose weight is orthogonal by construction (:meth:`make_orthogonal`)."""
        return [i for i, layer in enumerate(self.layers) if orthogonal_parametrization(layer) is not None]

    def orthogonality_terms(self) -> List[Tuple[int, Tensor]]:
        """``(index, A)`` per square layer that is not orthogonal by construction: ``A`` (a
        view of the weight parameter, so that gradients reach it) should stay orthogonal,
        ``A A^T = I``."""
        built = set(self.orthogonal_layer_indices)
        return [(i, self.view(i).matrix) for i in self.square_layer_indices if i not in built]

    def computed_weights(self):
        """A context in which every parametrized weight is computed once, with its graph
        (:func:`~lightning_gait.networks.orthogonal.computed_weights`)."""
        return computed_weights(self.layers)

    def layer_inverse(self, index: int):
        """An exact inverse of layer ``index``'s affine map from its current weights.

        Dispatched on the layer's type (:func:`~lightning_gait.networks.layers.layer_inverse`);
        ``solve(r)`` inverts the linear part, ``solve_affine(z)`` the whole map.
        """
        if not self.is_square(index):
            raise ValueError(f"layer {index + 1} is not square and has no inverse")
        return layer_inverse(self.layers[index])

    def invert_layer(self, index: int, a: Tensor) -> Tensor:
        """``G_l(a) = F_l^-1(f_l^-1(a))``: the input that makes layer ``index`` output ``a``."""
        z = self.activation_of(index).inverse(a)
        return self.layer_inverse(index).solve_affine(z)

    def trace(self, x: Tensor, *, local: bool = False) -> ForwardTrace:
        """Forward pass keeping every layer's input, pre-activation and output."""
        a = self.prepare_input(x)
        inputs, pre, post = [], [], []
        for i, layer in enumerate(self.layers):
            inp = a if i == 0 else self.select_input(i, a)
            if local:
                inp = inp.detach()
            z = layer(inp)
            a = self.activation_of(i)(z)
            inputs.append(inp)
            pre.append(z)
            post.append(a)
        return ForwardTrace(inputs, pre, post)

    def logits(self, output: Tensor) -> Tensor:
        """The class logits: the first ``num_classes`` entries of the flattened output."""
        return output.flatten(1)[:, : self.num_classes]

    def forward(self, x: Tensor) -> Tensor:
        a = self.prepare_input(x)
        for i, layer in enumerate(self.layers):
            a = self.activation_of(i)(layer(a if i == 0 else self.select_input(i, a)))
        return self.logits(a)
