"""Single-layer TFLite models of exactly one traced layer's shape, for cost profiling: built
float with Keras, then quantized with the same recipe code deployment uses."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ConversionError
from ..schema import Layer, Precision
from .recipe import KIND_OPS, OpRule, check_op, quantize, weight_ops

if TYPE_CHECKING:
    from tensorflow import keras


def _conv_padding(layer: Layer) -> tuple[str, tuple[int, int] | None]:
    """'same' / 'valid' when TF's padding equals PyTorch's, else 'valid' after an explicit pad
    (as onnx2tf converts it)."""
    if -1 in layer.padding:  # PyTorch's padding="same" (stride 1 only): TF's "same" pads alike
        return "same", None
    ph, pw = (layer.padding * 2)[:2]
    if ph == 0 and pw == 0:
        return "valid", None
    ok = True
    for i, p in enumerate((ph, pw)):
        n, s, k, d = layer.in_shape[1 + i], layer.stride[i], layer.kernel[i], layer.dilation[i]
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        ok &= out == layer.out_shape[1 + i] and total // 2 == p and total - total // 2 == p
    return ("same", None) if ok else ("valid", (ph, pw))


def as_2d(layer: Layer) -> Layer:
    """A Conv1d layer as the CONV_2D of height 1 the artifact runs it as; other layers unchanged."""
    if layer.kind == "linear" or len(layer.in_shape) != 2:
        return layer
    (c, n), (co, no) = layer.in_shape, layer.out_shape
    return replace(layer, in_shape=(c, 1, n), out_shape=(co, 1, no), kernel=(1, *layer.kernel),
                   stride=(1, *layer.stride), padding=layer.padding if -1 in layer.padding else (0, *layer.padding),
                   dilation=(1, *layer.dilation))


def _keras_layer_model(layer: Layer) -> keras.Model:
    from ..quiet import import_tensorflow

    layer = as_2d(layer)
    tf = import_tensorflow()

    init = tf.keras.initializers.GlorotUniform(seed=0)
    if layer.kind == "linear":
        inp = tf.keras.Input(shape=layer.in_shape, batch_size=1, name="input")
        x = tf.keras.layers.Dense(layer.out_channels, use_bias=layer.bias, kernel_initializer=init)(inp)
        return tf.keras.Model(inp, x)
    c, h, w = layer.in_shape
    inp = tf.keras.Input(shape=(h, w, c), batch_size=1, name="input")
    if layer.kind == "tconv":
        return tf.keras.Model(inp, _transposed(tf, layer, inp, init))
    padding, explicit = _conv_padding(layer)
    x = tf.keras.layers.ZeroPadding2D(explicit)(inp) if explicit else inp
    common = {"strides": layer.stride, "padding": padding, "dilation_rate": layer.dilation,
              "use_bias": layer.bias, "activation": "relu"}  # conv + fused ReLU, as in the nets
    if layer.kind == "dwconv":
        x = tf.keras.layers.DepthwiseConv2D(layer.kernel, depth_multiplier=layer.out_channels // c,
                                            depthwise_initializer=init, **common)(x)
    else:
        x = tf.keras.layers.Conv2D(layer.out_channels, layer.kernel, kernel_initializer=init, **common)(x)
    return tf.keras.Model(inp, x)


def _transposed(tf: Any, layer: Layer, inp: Any, init: Any) -> Any:
    """A ConvTranspose2d as onnx2tf converts it: a VALID TRANSPOSE_CONV, then the rows and
    columns PyTorch's padding drops (and output_padding adds back) cut off."""
    x = tf.keras.layers.Conv2DTranspose(layer.out_channels, layer.kernel, strides=layer.stride, padding="valid",
                                        use_bias=layer.bias, kernel_initializer=init, activation="relu")(inp)
    crop = []
    for i in range(2):
        full = (layer.in_shape[1 + i] - 1) * layer.stride[i] + layer.kernel[i]
        top = min(layer.padding[i], full - 1)
        crop.append((top, max(full - top - layer.out_shape[1 + i], 0)))
    return tf.keras.layers.Cropping2D(tuple(crop))(x) if any(a or b for a, b in crop) else x


def float_layer_model(layer: Layer) -> bytes:
    """A float32 .tflite (with a signature) holding just `layer`."""
    if not layer.searchable:
        raise ConversionError(f"layer {layer.name} is kept float ({layer.fixed_reason}); it is not profiled alone")
    from .float_graph import tflite_convert

    return tflite_convert(lambda tf: tf.lite.TFLiteConverter.from_keras_model(_keras_layer_model(layer)),
                          f"layer {layer.name}: building its single-layer model")


def layer_model(layer: Layer, precision: Precision, float_model: bytes | None = None) -> bytes:
    """`layer` alone at `precision`, quantized as deployment quantizes, checked op by op."""
    base = float_model if float_model is not None else float_layer_model(layer)
    out = quantize(base, [OpRule(".*", KIND_OPS[layer.kind], precision)])
    ops = weight_ops(out)
    if len(ops) != 1:
        raise ConversionError(f"layer {layer.name}: the single-layer model has {len(ops)} weight ops, not 1")
    check_op(ops[0], precision, f"layer {layer.name}")
    return out
