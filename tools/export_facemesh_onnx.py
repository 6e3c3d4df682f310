"""Build step: convert MediaPipe's 468-point face mesh model (face_landmark.tflite) to ONNX, and check it.

The model comes from the mediapipe 0.10.14 wheel (Apache-2.0), mediapipe/modules/face_landmark/
face_landmark.tflite. Its weights are stored as float16 and expanded by DEQUANTIZE ops; the converter
writes the same float16 values as ONNX initializers followed by a Cast to float32, so the ONNX model
computes with exactly the weights TFLite computes with. Nothing else about the model changes.

Route: tflite2onnx 0.4.1 fails on this model (float16 DEQUANTIZE inputs break its layout pass), and
tf2onnx needs a full TensorFlow install, so the graph is rebuilt op by op from the flatbuffer (the
`tflite` parser package) with onnx.helper. The model only uses CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD,
MAX_POOL_2D, PAD and DEQUANTIZE; anything else is refused. PRELU is written as the equivalent pair of
depthwise convolutions, which ONNX Runtime runs far faster than its PRelu operator (see the PRELU case).

Run once, in a scratch venv (mediapipe 0.10.14 needs Python 3.11 and numpy<2; it is not a dependency of
the service):

    python3 -m venv /tmp/facemesh-venv
    /tmp/facemesh-venv/bin/pip install "numpy<2" mediapipe==0.10.14 tflite==2.18.0 onnx onnxruntime \
        opencv-python-headless av
    /tmp/facemesh-venv/bin/pip download --no-deps mediapipe==0.10.14 -d /tmp/mpwheel
    cd /tmp/mpwheel && unzip -o mediapipe-0.10.14-*.whl 'mediapipe/modules/face_landmark/face_landmark.tflite'
    cd /work/main
    /tmp/facemesh-venv/bin/python tools/export_facemesh_onnx.py convert \
        /tmp/mpwheel/mediapipe/modules/face_landmark/face_landmark.tflite \
        lipsync_service/core/assets/facemesh/face_landmark.onnx
    # Compare with MediaPipe's own FaceMesh on real frames (same crops), in pixels:
    /tmp/facemesh-venv/bin/python tools/export_facemesh_onnx.py check ../shared/media
    # Record the lip reference points the tests compare against:
    /tmp/facemesh-venv/bin/python tools/export_facemesh_onnx.py reference ../shared/media \
        tests/core/data/landmark_reference.json

`check` imports lipsync_service.core.landmarks from this checkout (it only needs numpy, opencv and
onnxruntime), so it tests the crop preparation the service really uses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Frames recorded into the test reference: spread over each clip, fixed so the test decodes the same ones.
REFERENCE_FRAMES = {
    "talking_1.mp4": [0, 30, 60, 90, 120],
    "talking_2.mp4": [0, 25, 50, 75, 100],
    "face_static_720p_streamable.mp4": [0, 50, 100, 150, 200],
}


# --------------------------------------------------------------------------------------------- convert


def convert(tflite_path: Path, onnx_path: Path) -> None:
    """Rebuild the TFLite graph as an ONNX graph (opset 17), NHWC input, NCHW inside.

    The ONNX model takes `image` float32 [batch, 192, 192, 3] (RGB in [0, 1], like MediaPipe feeds
    the TFLite model) and returns `landmarks` float32 [batch, 1404] (468 x (x, y, z) in input pixels)
    and `face_flag` float32 [batch, 1] (the face presence logit; MediaPipe applies a sigmoid).
    """
    import numpy as np
    import onnx
    import tflite
    from onnx import TensorProto, helper, numpy_helper

    buf = tflite_path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def tensor_array(idx: int) -> np.ndarray:
        t = graph.Tensors(idx)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
                 tflite.TensorType.INT32: np.int32}[t.Type()]
        return np.frombuffer(data.tobytes(), dtype).reshape(t.ShapeAsNumpy())

    def options(op, cls):
        o = cls()
        table = op.BuiltinOptions()
        o.Init(table.Bytes, table.Pos)
        return o

    def shape(idx: int) -> list[int]:
        return [int(v) for v in graph.Tensors(idx).ShapeAsNumpy()]

    def same_pads(in_hw: list[int], out_hw: list[int], k: tuple[int, int], s: tuple[int, int]) -> list[int]:
        # TensorFlow's SAME: the odd pixel of padding goes after (bottom/right), unlike a symmetric pad.
        before, after = [], []
        for i in range(2):
            total = max((out_hw[i] - 1) * s[i] + k[i] - in_hw[i], 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return before + after

    name_of = {}  # tflite tensor index -> ONNX value name (NCHW activations or float32 weights)
    nodes, inits = [], []
    dequantized = {}  # tflite float32 tensor index -> its float16 source array

    in_idx = int(graph.InputsAsNumpy()[0])
    nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
    name_of[in_idx] = "image_nchw"

    def weight(idx: int, arr_fn, label: str) -> str:
        """Store a float16 weight (re-laid out by arr_fn) as an initializer cast to float32 at load."""
        src = dequantized[idx] if idx in dequantized else tensor_array(idx)
        arr = arr_fn(src)
        if arr.dtype == np.float16:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), f"{label}_f16"))
            nodes.append(helper.make_node("Cast", [f"{label}_f16"], [label], to=TensorProto.FLOAT))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(np.float32)), label))
        return label

    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ins = [int(v) for v in op.InputsAsNumpy()]
        out = int(op.OutputsAsNumpy()[0])
        oname = graph.Tensors(out).Name().decode().replace("/", "_")
        if kind == "DEQUANTIZE":
            dequantized[out] = tensor_array(ins[0])
            continue
        x = name_of[ins[0]]
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = kind == "DEPTHWISE_CONV_2D"
            o = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            if o.FusedActivationFunction() != 0 or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise NotImplementedError(f"{oname}: fused activation or dilation not handled")
            # TFLite kernels: conv [O, KH, KW, I], depthwise [1, KH, KW, C*M]; ONNX wants [O, I/g, KH, KW].
            perm = (3, 0, 1, 2) if depthwise else (0, 3, 1, 2)
            w = weight(ins[1], lambda a, perm=perm: a.transpose(perm), f"{oname}_w")
            b = weight(ins[2], lambda a: a, f"{oname}_b")
            kshape = shape(ins[1])
            k = (kshape[1], kshape[2])
            s = (o.StrideH(), o.StrideW())
            pads = [0, 0, 0, 0]
            if o.Padding() == tflite.Padding.SAME:
                pads = same_pads(shape(ins[0])[1:3], shape(out)[1:3], k, s)
            attrs = {"kernel_shape": list(k), "strides": list(s), "pads": pads}
            if depthwise:
                attrs["group"] = shape(ins[0])[3]
            nodes.append(helper.make_node("Conv", [x, w, b], [oname], **attrs))
        elif kind == "PRELU":
            # prelu(x) = x + (1 - alpha) * relu(-x), written as two 1x1 depthwise convolutions (the first with
            # weight -1 and the relu fused, the second scaling by 1 - alpha with the add fused). Same values
            # as ONNX PRelu, but ONNX Runtime's CPU PRelu kernel is slow and keeps the graph out of its
            # blocked layout: on one core it took 4.2 of the model's 9.2 ms; in this form the model runs in
            # 5.0 ms. alpha is [1, 1, C] per channel in NHWC; a depthwise weight is [C, 1, 1, 1].
            a = weight(ins[1], lambda a: a.reshape(-1, 1, 1, 1), f"{oname}_alpha")
            channels = shape(ins[0])[3]
            neg, keep = f"{oname}_minus_one", f"{oname}_one"
            inits.append(numpy_helper.from_array(np.full((channels, 1, 1, 1), -1.0, np.float32), neg))
            inits.append(numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), keep))
            dw = {"kernel_shape": [1, 1], "group": channels}
            nodes += [
                helper.make_node("Sub", [keep, a], [f"{oname}_slope"]),  # folded to a constant at load
                helper.make_node("Conv", [x, neg], [f"{oname}_neg"], **dw),
                helper.make_node("Relu", [f"{oname}_neg"], [f"{oname}_negpart"]),
                helper.make_node("Conv", [f"{oname}_negpart", f"{oname}_slope"], [f"{oname}_scaled"], **dw),
                helper.make_node("Add", [x, f"{oname}_scaled"], [oname]),
            ]
        elif kind == "ADD":
            if options(op, tflite.AddOptions).FusedActivationFunction() != 0:
                raise NotImplementedError(f"{oname}: fused activation not handled")
            nodes.append(helper.make_node("Add", [x, name_of[ins[1]]], [oname]))
        elif kind == "MAX_POOL_2D":
            o = options(op, tflite.Pool2DOptions)
            k = (o.FilterHeight(), o.FilterWidth())
            s = (o.StrideH(), o.StrideW())
            pads = [0, 0, 0, 0]
            if o.Padding() == tflite.Padding.SAME:
                pads = same_pads(shape(ins[0])[1:3], shape(out)[1:3], k, s)
            nodes.append(helper.make_node("MaxPool", [x], [oname], kernel_shape=list(k), strides=list(s), pads=pads))
        elif kind == "PAD":
            p = tensor_array(ins[1]).astype(np.int64)  # [[before, after]] per NHWC axis
            nchw = [0, 3, 1, 2]
            pads = [int(p[a, 0]) for a in nchw] + [int(p[a, 1]) for a in nchw]
            if pads[0] or pads[4]:
                raise NotImplementedError(f"{oname}: padding along the batch axis")
            pname = f"{oname}_pads"
            inits.append(numpy_helper.from_array(np.array(pads, np.int64), pname))
            nodes.append(helper.make_node("Pad", [x, pname], [oname], mode="constant"))
        else:
            raise NotImplementedError(f"op {kind} ({oname}) is not handled by this converter")
        name_of[out] = oname

    outs = [int(v) for v in graph.OutputsAsNumpy()]
    final = {}
    for idx in outs:
        n = graph.Tensors(idx).Name().decode()
        final[n] = name_of[idx]
    # The two heads end in 1x1 spatial maps: flatten them to [batch, features].
    shape_name = "flatten_shape"
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), shape_name))
    nodes.append(helper.make_node("Reshape", [final["conv2d_21"], shape_name], ["landmarks"]))
    nodes.append(helper.make_node("Reshape", [final["conv2d_31"], shape_name], ["face_flag"]))

    g = helper.make_graph(
        nodes, "face_landmark",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 192, 192, 3])],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["batch", 1404]),
         helper.make_tensor_value_info("face_flag", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="export_facemesh_onnx")
    m.ir_version = 8  # readable by every onnxruntime >= 1.14
    m.doc_string = (f"MediaPipe face_landmark.tflite (mediapipe 0.10.14, Apache-2.0, sha256 "
                    f"{hashlib.sha256(buf).hexdigest()}) converted to ONNX; weights unchanged (float16).")
    onnx.checker.check_model(m, full_check=True)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(onnx_path))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes) from {tflite_path} "
          f"(sha256 {hashlib.sha256(buf).hexdigest()})")


# -------------------------------------------------------------------------------- mediapipe reference


def _mediapipe_graph():
    """MediaPipe's FaceMesh graph (static image mode, no refinement), also returning the crops it used."""
    from mediapipe.python.solution_base import SolutionBase

    return SolutionBase(
        binary_graph_path="mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb",
        side_inputs={"num_faces": 1, "with_attention": False, "use_prev_landmarks": False},
        outputs=["multi_face_landmarks", "face_rects_from_detections"],
    )


def _frames(path: Path, indices: list[int]):
    """(index, RGB uint8 frame) for the wanted frame indices, decoded with PyAV."""
    import av

    wanted = set(indices)
    with av.open(str(path)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                yield k, frame.to_ndarray(format="rgb24")
            if k >= max(indices):
                break


def _mp_points(result, w: int, h: int):
    import numpy as np

    lms = result.multi_face_landmarks[0].landmark
    return np.array([(p.x * w, p.y * h, p.z * w) for p in lms], np.float32)


def check(media_dir: Path) -> None:
    """Max abs difference (pixels) between MediaPipe's FaceMesh and our ONNX model on the same crops.

    Both input normalisations are tried so the right one is a measured fact, not a guess.
    """
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT))
    from lipsync_service.core import landmarks as lm

    marker = lm.FaceLandmarker()
    mp_graph = _mediapipe_graph()
    worst = {"[0,1]": 0.0, "[-1,1]": 0.0}
    for clip, indices in REFERENCE_FRAMES.items():
        for k, rgb in _frames(media_dir / clip, indices):
            h, w = rgb.shape[:2]
            res = mp_graph.process({"image": rgb})
            ref = _mp_points(res, w, h)
            rect = res.face_rects_from_detections[0]
            roi = lm.FaceRoi(cx=rect.x_center * w, cy=rect.y_center * h, side=rect.width * w,
                             rotation=rect.rotation)
            crop = lm.crop_for_model(rgb, roi)
            for label, (scale, offset) in {"[0,1]": (1 / 255, 0.0), "[-1,1]": (2 / 255, -1.0)}.items():
                x = crop[None].astype(np.float32) * scale + offset
                raw, flag = marker._session.run(None, {"image": x})
                pts = lm.project_points(raw[0].reshape(-1, 3), roi)
                d = float(np.abs(pts[:, :2] - ref[:, :2]).max())
                worst[label] = max(worst[label], d)
                if label == "[0,1]":
                    dz = float(np.abs(pts[:, 2] - ref[:, 2]).max())
                    print(f"{clip} frame {k}: max |dxy| {d:.3f} px, |dz| {dz:.3f}, crop {roi.side:.0f} px, "
                          f"presence {1 / (1 + np.exp(-flag[0, 0])):.3f}")
    print("worst max |dxy| by input range:", {k: round(v, 3) for k, v in worst.items()})


def reference(media_dir: Path, out: Path) -> None:
    """Record MediaPipe FaceMesh's own lip points (static image mode) for the tests' fixed frames."""
    import mediapipe as mp

    sys.path.insert(0, str(REPO_ROOT))
    from lipsync_service.core.landmarks import INNER_LIPS, OUTER_LIPS

    lips = sorted(set(OUTER_LIPS) | set(INNER_LIPS))
    clips = {}
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as fm:
        for clip, indices in REFERENCE_FRAMES.items():
            frames = {}
            for k, rgb in _frames(media_dir / clip, indices):
                h, w = rgb.shape[:2]
                res = fm.process(rgb)
                if not res.multi_face_landmarks:
                    raise RuntimeError(f"MediaPipe found no face in {clip} frame {k}")
                pts = _mp_points(res, w, h)
                frames[str(k)] = {str(i): [round(float(pts[i, 0]), 2), round(float(pts[i, 1]), 2)] for i in lips}
            clips[clip] = frames
    doc = {
        "about": "MediaPipe FaceMesh lip landmarks (x, y in frame pixels), recorded by "
                 "tools/export_facemesh_onnx.py reference with mediapipe " + mp.__version__ +
                 " (static_image_mode=True, refine_landmarks=False); frames decoded with PyAV as rgb24.",
        "clips": clips,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # One point per line keeps the file short and its diffs readable.
    text = re.sub(r"\[\s+(-?[\d.]+),\s+(-?[\d.]+)\s+\]", r"[\1, \2]", json.dumps(doc, indent=1))
    out.write_text(text + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("convert", help="face_landmark.tflite -> face_landmark.onnx")
    p.add_argument("tflite", type=Path)
    p.add_argument("onnx", type=Path)
    p = sub.add_parser("check", help="compare with MediaPipe's FaceMesh on the reference frames")
    p.add_argument("media_dir", type=Path)
    p = sub.add_parser("reference", help="record the lip reference points for tests/core")
    p.add_argument("media_dir", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "convert":
        convert(args.tflite, args.onnx)
    elif args.cmd == "check":
        check(args.media_dir)
    else:
        reference(args.media_dir, args.out)


if __name__ == "__main__":
    main()
