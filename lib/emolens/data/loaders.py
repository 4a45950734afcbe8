"""Media decoding for local copies: images with Pillow, video frames and video audio tracks with PyAV,
audio files with soundfile (each imported on first use).

Video: ``frames`` (T) frames sampled as the centres of T equal segments (:func:`segment_indices`,
TSN-style); ``size`` resizes (int -> square, (H, W)) or keeps the native size (None). Audio: mono
float32 at the file's own sample rate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np


_DEFAULT_FRAMES = 8


def _size_hw(size: Any) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def segment_indices(n: int, t: int) -> np.ndarray:
    """Indices of ``t`` frames sampled uniformly from ``n``: the centres of ``t`` equal segments
    (``floor((i + 0.5) * n / t)``). ``n < t`` repeats frames. ``[t]`` int64."""
    if n <= 0:
        raise ValueError("a clip with no frames")
    if t <= 0:
        raise ValueError("frames must be >= 1")
    return np.minimum(((np.arange(t) + 0.5) * n / t).astype(np.int64), n - 1)


def read_image(path: Union[str, Path], size: Any = None) -> np.ndarray:
    """An image file -> ``[1, H, W, 3]`` uint8 RGB (Pillow)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        hw = _size_hw(size)
        if hw is not None:
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)[None].copy()


def _to_rgb(frame, hw: Optional[Tuple[int, int]]) -> np.ndarray:
    if hw is not None:
        frame = frame.reformat(width=hw[1], height=hw[0], format="rgb24")
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _video_pass(path: Path, idx: Optional[np.ndarray], hw) -> Tuple[Dict[int, np.ndarray], int]:
    import av

    want = set(int(i) for i in idx) if idx is not None else set()
    got: Dict[int, np.ndarray] = {}
    n = 0
    with av.open(str(path), mode="r") as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        st = c.streams.video[0]
        st.thread_type = "AUTO"
        for i, fr in enumerate(c.decode(st)):
            if i in want:
                got[i] = _to_rgb(fr, hw)
            n = i + 1
    return got, n


def read_video(path: Union[str, Path], frames: int = _DEFAULT_FRAMES, size: Any = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A video file -> (``[T, H, W, 3]`` uint8 RGB frames, info) with PyAV.

    T = ``frames`` frames sampled uniformly (:func:`segment_indices`); ``size`` resizes (None keeps
    the native size). ``info``: ``n_frames`` (decoded count), ``frame_indices``, ``fps``.
    """
    import av

    path = Path(path)
    hw = _size_hw(size)
    with av.open(str(path), mode="r") as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        st = c.streams.video[0]
        declared = int(st.frames or 0)
        fps = float(st.average_rate) if st.average_rate else None
    n = declared
    if n <= 0:
        _, n = _video_pass(path, None, hw)
    idx = segment_indices(n, frames)
    got, actual = _video_pass(path, idx, hw)
    if actual != n:  # the container's frame count was off: sample again from the true count
        n = actual
        idx = segment_indices(n, frames)
        got, _ = _video_pass(path, idx, hw)
    arr = np.stack([got[int(i)] for i in idx])
    return arr, {"n_frames": n, "frame_indices": idx.tolist(), "fps": fps}


def read_video_audio(path: Union[str, Path]) -> Optional[Tuple[np.ndarray, int]]:
    """The audio track of a video -> (mono float32 waveform ``[S]``, sample rate), or None when the
    file has no audio stream (PyAV; channels are averaged by the resampler)."""
    import av

    with av.open(str(path), mode="r") as c:
        if not c.streams.audio:
            return None
        st = c.streams.audio[0]
        sr = int(st.rate or st.codec_context.sample_rate)
        res = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for fr in c.decode(st):
            for o in res.resample(fr):
                chunks.append(o.to_ndarray().reshape(-1))
        for o in res.resample(None):
            chunks.append(o.to_ndarray().reshape(-1))
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wave, sr


def read_audio(path: Union[str, Path]) -> Tuple[np.ndarray, int]:
    """An audio file -> (mono float32 waveform ``[S]``, sample rate) with soundfile (channels averaged)."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1).astype(np.float32), int(sr)
