"""Fuzz harness of the ONNX importer (``graphopt.onnx.importer.from_onnx``).

``test_one_input(data)`` feeds the bytes to ``from_onnx`` as serialized ONNX, exactly as a user
passing a downloaded file's bytes would; only :class:`~graphopt.errors.GraphoptError` may come
out. Anything else (a raw ``ZeroDivisionError``, a ``RecursionError``, a ``MemoryError`` not
raised by the budget) propagates so the fuzzer reports it, and so does
``OnnxInternalError``: the importer's last line of defence wraps unexpected exceptions in it,
and each one is a validation gap to fix. Each input runs under a small memory
budget so a crafted model that asks for gigabytes answers ``ResourceLimitError`` at once.

Seeds are small real models: graphopt's own zoo exported with ``to_onnx`` (MLP, ConvZoo,
TensorOps, a one-layer tiny BERT) and a selection of the ONNX package's backend node test models.
``mutate`` is a structure-aware mutator (attributes, dims, dtypes, initializers, node inputs,
opsets) that drivers and tests can use on top of byte-level mutation, which rarely gets past the
protobuf decoder into the importer's own checks.

Run with ``python fuzz/run.py onnx`` (atheris when installed, else a deterministic loop).
"""

from __future__ import annotations

import random
import warnings

from graphopt.errors import GraphoptError, InternalError, OnnxImportError
from graphopt.limits import memory_budget_scope
from graphopt.onnx.importer import OnnxInternalError, from_onnx

SEED_DIR = "fuzz/corpus/onnx"

# Budget for one fuzz input: far above any seed, far below what would hurt the machine.
_BUDGET = 64 << 20

# ONNX backend node cases kept as seeds: one or two per op family the importer converts.
_NODE_CASES = (
    "test_conv_with_strides_padding", "test_convtranspose_pads", "test_maxpool_2d_pads",
    "test_averagepool_2d_same_upper", "test_reshape_negative_dim", "test_slice_neg_steps",
    "test_gather_negative_indices", "test_squeeze_negative_axes", "test_unsqueeze_negative_axes",
    "test_concat_3d_axis_negative_1", "test_split_variable_parts_2d_opset18",
    "test_resize_upsample_scales_linear", "test_reduce_sum_negative_axes_keepdims_example",
    "test_softmax_negative_axis", "test_transpose_all_permutations_1", "test_constant_pad_axes",
    "test_quantizelinear_axis", "test_dequantizelinear_axis", "test_layer_normalization_4d_axis1",
    "test_batchnorm_epsilon", "test_gemm_all_attributes", "test_einsum_batch_matmul",
    "test_range_float_type_positive_delta", "test_constantofshape_int_zeros",
    "test_expand_dim_changed", "test_tile", "test_onehot_negative_indices", "test_tril_neg",
    "test_depthtospace_crd_mode_example", "test_cumsum_1d_reverse_exclusive",
    "test_flatten_negative_axis1", "test_argmax_negative_axis_keepdims_example",
    "test_gridsample", "test_scatter_elements_with_axis",
    "test_attention_4d_with_past_and_present",
    "test_qlinearmatmul_2D_uint8_float32", "test_convinteger_with_padding", "test_gru_defaults",
    "test_rotary_embedding_3d_input", "test_center_crop_pad_crop_and_pad",
    "test_group_normalization_example", "test_hannwindow",
)


def test_one_input(data: bytes) -> None:
    """Import ``data`` as an ONNX model; only GraphoptError may escape."""
    with memory_budget_scope(_BUDGET), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from_onnx(data)  # the default path users take: onnx.checker, then our own checks
            return
        except (OnnxInternalError, InternalError):
            raise  # an unexpected exception the importer wrapped: a finding
        except OnnxImportError as exc:
            if "not valid ONNX" not in str(exc):
                return
        except GraphoptError:
            return
        # The checker refused it; our own validation must hold without it too (check=False).
        try:
            from_onnx(data, check=False)
        except (OnnxInternalError, InternalError):
            raise
        except GraphoptError:
            pass


def seeds() -> list[bytes]:
    """Seed models, generated (``fuzz/run.py onnx --write-seeds`` stores them in SEED_DIR):
    graphopt's zoo exported with ``to_onnx`` (MLP, ConvZoo, TensorOps, a one-layer tiny BERT
    with and without contrib ops) and ~40 ONNX backend node test models. Deterministic (the
    models are seeded), so regenerating gives the same files."""
    return list(_make_seeds().values())


def _make_seeds() -> dict[str, bytes]:
    import torch

    import graphopt
    from graphopt import zoo

    out: dict[str, bytes] = {}
    models = {"zoo_mlp": zoo.get("mlp", width=32, depth=3), "zoo_convzoo": zoo.get("convzoo",
              size=16, batch=1), "zoo_tensorops": zoo.get("tensorops", seq=6, batch=1)}
    try:
        models["zoo_bert_tiny"] = _tiny_bert()
    except ImportError:  # transformers is a test extra
        pass
    for name, (model, args) in models.items():
        with torch.no_grad():
            graph = graphopt.trace(model, args)
        out[name] = graphopt.to_onnx(graph).SerializeToString()
        if name == "zoo_bert_tiny":  # standard ops only (no com.microsoft contrib ops)
            out[name + "_std"] = graphopt.to_onnx(graph, contrib_ops=False).SerializeToString()
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = {c.name: c for c in node_cases.collect_testcases(None)}
    for name in _NODE_CASES:
        if name in cases:
            out["node_" + name[5:]] = node_case_model(cases[name]).SerializeToString()
    return out


def node_case_model(case):
    """An ONNX backend node case's model with the inputs the importer needs at import time
    (shapes, axes, pads...) turned into initializers holding the case's data, so that mutants
    reach the converters instead of stopping at "must be a constant"."""
    import onnx
    from onnx import numpy_helper

    from graphopt.errors import OnnxImportError
    from graphopt.onnx.importer import from_onnx

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    feeds = dict(zip(names, case.data_sets[0][0])) if case.data_sets else {}
    for _ in range(len(names)):
        try:
            from_onnx(model, check=False)
            break
        except OnnxImportError as exc:
            frozen = [n for n in exc.needs_static if n in feeds]
            if not frozen:
                break
            for n in frozen:
                model.graph.initializer.append(numpy_helper.from_array(feeds.pop(n), n))
                keep = [i for i in model.graph.input if i.name != n]
                del model.graph.input[:]
                model.graph.input.extend(keep)
        except Exception:  # noqa: BLE001  (not importable: keep the model as it is)
            break
    return model


def _tiny_bert():
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, use_cache=False)
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    return model, (torch.randint(0, 64, (1, 8)),)


# ------------------------------------------------------------------------------- mutation
_INTS = (0, -1, -2, 1, 2, 3, 5, 7, 64, 2**31, -(2**31), 2**40, -(2**62), 2**62)
_FLOATS = (0.0, -1.0, 1e-45, 1e38, float("nan"), float("inf"), float("-inf"), 2.0)
_STRINGS = (b"", b"NOTSET", b"SAME_UPPER", b"VALID", b"nearest", b"linear", b"cubic", b"DCR",
            b"CRD", b"constant", b"reflect", b"edge", b"xx\xff", b"tanh", b"none")
_DIM_PARAMS = ("", "N", "batch size", "__import__('os').system('true')", "1+", "a" * 300,
               "s0*2", "-1", "E")
_DTYPES = (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 16, 17, 21, 23, 99, 2**20)
_OPS = ("Conv", "MaxPool", "Reshape", "Slice", "Gather", "Concat", "Split", "Resize", "Pad",
        "Transpose", "Squeeze", "Unsqueeze", "ReduceSum", "Softmax", "Expand", "Tile", "Range",
        "ConstantOfShape", "TopK", "QuantizeLinear", "DequantizeLinear", "LayerNormalization",
        "Einsum", "Flatten", "Cast", "OneHot", "DepthToSpace", "EyeLike", "CumSum", "Attention")
_CONTRIB_OPS = ("FusedConv", "FusedGemm", "FusedMatMul", "MultiHeadAttention", "Gelu",
                "FastGelu", "BiasGelu", "QuickGelu")
_ATTR_NAMES = ("axis", "axes", "strides", "pads", "dilations", "kernel_shape", "group", "perm",
               "to", "blocksize", "num_outputs", "split", "keepdims", "mode", "auto_pad", "k",
               "output_padding", "output_shape", "num_heads", "batch_dims", "start", "end")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to three structure-aware mutations (or a byte-level one when it does
    not decode as a model)."""
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001  (not a model: mutate bytes)
        return _mutate_bytes(data, rng)
    try:
        for _ in range(rng.randint(1, 3)):
            rng.choice(_MUTATORS)(model, rng)
        return model.SerializeToString()
    except Exception:  # noqa: BLE001  (e.g. a name that is not valid UTF-8: mutate bytes)
        return _mutate_bytes(data, rng)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data or b"\0")
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        choice = rng.random()
        if choice < 0.6:
            buf[i] = rng.randrange(256)
        elif choice < 0.8:
            del buf[i:i + rng.randint(1, 16)]
        else:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if not buf:
            buf = bytearray(b"\0")
    return bytes(buf)


def _pick_node(model, rng):
    nodes = model.graph.node
    return nodes[rng.randrange(len(nodes))] if nodes else None


def _mutate_attribute(model, rng) -> None:
    from onnx import AttributeProto as A

    node = _pick_node(model, rng)
    if node is None:
        return
    if not node.attribute or rng.random() < 0.25:
        a = node.attribute.add()
        a.name = rng.choice(_ATTR_NAMES)
        a.type = rng.choice((A.INT, A.INTS, A.FLOAT, A.STRING))
        _fill_attribute(a, rng)
        return
    a = node.attribute[rng.randrange(len(node.attribute))]
    if rng.random() < 0.1:
        node.attribute.remove(a)
    elif rng.random() < 0.1:
        a.type = rng.choice((A.INT, A.INTS, A.FLOAT, A.FLOATS, A.STRING, A.TENSOR))
        _fill_attribute(a, rng)
    else:
        _fill_attribute(a, rng)


def _fill_attribute(a, rng) -> None:
    from onnx import AttributeProto as A

    if a.type == A.INT:
        a.i = rng.choice(_INTS)
    elif a.type == A.FLOAT:
        a.f = rng.choice(_FLOATS)
    elif a.type == A.STRING:
        a.s = rng.choice(_STRINGS)
    elif a.type == A.INTS:
        values = list(a.ints) or [1, 1]
        op = rng.random()
        if op < 0.5:
            values[rng.randrange(len(values))] = rng.choice(_INTS)
        elif op < 0.7:
            values.pop(rng.randrange(len(values)))
        elif op < 0.9:
            values.append(rng.choice(_INTS))
        else:
            values = []
        del a.ints[:]
        a.ints.extend(values)
    elif a.type == A.FLOATS:
        del a.floats[:]
        a.floats.extend(rng.choice(_FLOATS) for _ in range(rng.randint(0, 4)))
    elif a.type == A.TENSOR:
        _mutate_tensor(a.t, rng)


def _mutate_tensor(t, rng) -> None:
    op = rng.random()
    if op < 0.3 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice(_INTS)
    elif op < 0.45:
        t.dims.append(rng.choice((0, 1, 2, 3, -1)))
    elif op < 0.55 and t.dims:
        del t.dims[-1]
    elif op < 0.75:
        t.data_type = rng.choice(_DTYPES)
    elif op < 0.9 and t.raw_data:
        raw = t.raw_data
        t.raw_data = raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw + raw[:7]
    elif t.raw_data and t.data_type in (6, 7) and rng.random() < 0.7:  # int32/int64 values
        width = 4 if t.data_type == 6 else 8  # shapes, axes, pads, steps: set one to an edge
        count = len(t.raw_data) // width
        if count:
            i = rng.randrange(count) * width
            value = rng.choice(_INTS) % (1 << (8 * width))
            t.raw_data = (t.raw_data[:i] + value.to_bytes(width, "little")
                          + t.raw_data[i + width:])
    elif t.raw_data:  # flip bits of the values (scales, zero points, shapes)
        raw = bytearray(t.raw_data)
        i = rng.randrange(len(raw))
        raw[i] = rng.choice((0, 0x7F, 0x80, 0xFF))
        t.raw_data = bytes(raw)
    else:
        t.data_location = 1  # EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", rng.choice(("w.bin", "../x", "/etc/passwd"))


def _mutate_value_info(model, rng) -> None:
    pools = [p for p in (model.graph.input, model.graph.output, model.graph.value_info) if p]
    if not pools:
        return
    pool = rng.choice(pools)
    info = pool[rng.randrange(len(pool))]
    tt = info.type.tensor_type
    op = rng.random()
    if op < 0.2:
        tt.elem_type = rng.choice(_DTYPES)
    elif op < 0.3:
        tt.ClearField("shape")
    elif op < 0.4:
        tt.shape.dim.add().dim_value = rng.choice((1, 2, 0))
    elif op < 0.5 and tt.shape.dim:
        del tt.shape.dim[-1]
    elif tt.shape.dim:
        dim = tt.shape.dim[rng.randrange(len(tt.shape.dim))]
        if rng.random() < 0.6:
            dim.dim_value = rng.choice(_INTS)
        else:
            dim.dim_param = rng.choice(_DIM_PARAMS)


def _mutate_initializer(model, rng) -> None:
    inits = model.graph.initializer
    if inits:
        _mutate_tensor(inits[rng.randrange(len(inits))], rng)


def _mutate_inputs(model, rng) -> None:
    node = _pick_node(model, rng)
    if node is None:
        return
    names = [i.name for i in model.graph.input] + [t.name for t in model.graph.initializer]
    names += [o for n in model.graph.node for o in n.output]
    op = rng.random()
    if op < 0.3 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(names + [""])
    elif op < 0.5 and node.input:
        del node.input[rng.randrange(len(node.input))]
    elif op < 0.7:
        node.input.append(rng.choice(names))
    elif op < 0.85 and node.output:
        node.output[rng.randrange(len(node.output))] = rng.choice(names + ["", "fresh"])
    else:
        node.output.append(rng.choice(("extra", "")))


def _mutate_op(model, rng) -> None:
    node = _pick_node(model, rng)
    if node is None:
        return
    if rng.random() < 0.7:
        node.op_type = rng.choice(_OPS)
        node.domain = ""
    elif rng.random() < 0.5:
        node.op_type = rng.choice(_CONTRIB_OPS)
        node.domain = "com.microsoft"
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.add(domain="com.microsoft", version=1)
    else:
        nodes = model.graph.node
        nodes.remove(node) if rng.random() < 0.5 else nodes.add().CopyFrom(node)


def _mutate_opset(model, rng) -> None:
    if model.opset_import and rng.random() < 0.8:
        model.opset_import[0].version = rng.choice((1, 6, 7, 9, 10, 11, 12, 13, 17, 18, 21,
                                                    23, 1000))
    else:
        model.ir_version = rng.choice((0, 3, 4, 7, 10, 99))


_MUTATORS = (_mutate_attribute, _mutate_attribute, _mutate_attribute, _mutate_value_info,
             _mutate_initializer, _mutate_initializer, _mutate_inputs, _mutate_op, _mutate_opset)
