"""XKD's local views and its teachers' attention-weighted pooling, computed on the device.

Local views (XKD, https://arxiv.org/abs/2211.13929; its public Kinetics config): besides the
global view (the clip the loader delivers), each clip gives one *local* view: a random contiguous
window of ``1 / temporal_ratio`` of its frames (video) or of its audio. The video window
then takes a random-resized crop of area ``crop_scale`` of the frame (aspect 3/4-4/3), resized to
``size / spatial_ratio`` pixels, a horizontal flip (p 0.5), colour jitter (0.4, hue 0.2, on
every clip), grey-scale (p 0.2) and a Gaussian blur (p 0.5, sigma 0.1-2, kernel
``size // 20 * 2 + 1`` as XKD's); the audio window its own volume jitter (XKD: x U(0.8, 1.2))
and XKD's random time/frequency rescaling (:func:`audio_resize_crop`). XKD's teachers see the
local view, its students both views. Sizes are rounded down to whole patches / tubelets (at
least one).

``local_source: loader`` (the recipes): the loader makes the local view from the same decoded
frames and audio as the global one (:func:`loader_spec`, :mod:`avssl.data.local_view`: its own
crop of the frame, flip, colour jitter, grey-scale and volume); the blur and the audio's
resize crop are applied here, on the device. ``local_source: device``, and a batch without
local views (a data module that makes none), cut the local view from the global view instead
(:func:`local_video_view`, :func:`local_audio_view`): its crop is then a fraction of the global
crop, and it shares the global view's colour jitter and volume (a gain ratio r shifts the
log-mel by 2 ln r, the normalised fbank by ln r / std with AudioMAE's normalisation: at most
-0.07 / +0.06 with AudioSet's std 4.57 between XKD's 0.8-1.2 and 0.9-1.1 volume draws).

Attention pooling (XKD's ``cm_attn_mode: mean``): each teacher token is weighted by the
attention it receives in the last block (mean over heads and queries) and the weighted mean is
rescaled to the norm of the plain mean. XKD multiplies the weights of one modality by the mean
attention of the other; in its ``mean`` mode that factor is a constant that the rescaling
cancels, so it is not computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from avssl.data.local_view import LocalViewSpec
from avssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from avssl.models.layers import Block
from avssl.models.vit import ViTEncoder

LUMA = (0.299, 0.587, 0.114)
LOCAL_SOURCES = ("loader", "device")  # where local views are made (module docstring)


def check_local_options(
    temporal_ratio: float,
    spatial_ratio: float,
    crop_scale: tuple[float, float] | list[float],
    probabilities: tuple[float, float, float],
    teacher_pooling: str,
    colour: tuple[float, float, float, float] = (0.4, 1.0, 0.2, 1.9),
    source: str = "loader",
) -> None:
    """Refuses local-view and pooling settings that cannot be drawn (one-line errors);
    ``colour``: (jitter, jitter_p, hue, gain_db) of the loader's local view."""
    if temporal_ratio < 1 or spatial_ratio < 1:
        raise ValueError(
            f"XKD local_temporal_ratio and local_spatial_ratio must be >= 1 (the local view is "
            f"at most the global one), got {temporal_ratio} and {spatial_ratio}"
        )
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(
            f"XKD local_crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {crop_scale}"
        )
    if not all(0 <= p <= 1 for p in probabilities):
        raise ValueError(
            f"XKD local_flip_p, local_grey_p, local_blur_p must be in [0, 1], got {probabilities}"
        )
    jitter, jitter_p, hue, gain_db = colour
    if jitter < 0 or gain_db < 0 or not 0 <= jitter_p <= 1 or not 0 <= hue <= 0.5:
        raise ValueError(
            f"XKD local_jitter and local_gain_db must be >= 0, local_jitter_p in [0, 1] and "
            f"local_hue in [0, 0.5], got {jitter}, {gain_db}, {jitter_p}, {hue}"
        )
    if source not in LOCAL_SOURCES:
        raise ValueError(f"XKD local_source must be one of {LOCAL_SOURCES}, got {source!r}")
    if teacher_pooling not in ("mean", "attention"):
        raise ValueError(
            f"XKD teacher_pooling must be 'mean' or 'attention', got {teacher_pooling!r}"
        )


def whole_units(length: int, ratio: float, unit: int) -> int:
    """``length / ratio`` rounded down to a multiple of ``unit``, at least one unit and at most
    ``length`` rounded down (32 frames, ratio 4, tubelet 4 -> 8; 112 px, 1.16, patch 16 -> 96)."""
    whole = max(unit, length // unit * unit)
    return min(whole, max(unit, int(length / ratio) // unit * unit))


def _time_window(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """A random contiguous window of ``length`` along ``dim`` (>= 1), drawn per sample."""
    B, total = x.shape[0], x.shape[dim]
    start = torch.randint(0, total - length + 1, (B,), device=x.device)
    idx = start[:, None] + torch.arange(length, device=x.device)  # [B, length]
    shape = [B] + [1] * (x.dim() - 1)
    shape[dim] = length
    idx = idx.view(shape).expand(*[s if i != dim else length for i, s in enumerate(x.shape)])
    return torch.gather(x, dim, idx)


def local_audio_view(audio: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, 1, Ta, F]`` -> ``[B, 1, frames, F]``: a random window of ``frames`` fbank frames."""
    return _time_window(audio, 2, frames)


# XKD's local audio "randcrop" (BYOL-A's random resize crop, https://arxiv.org/abs/2103.06695):
# a canvas of (1.0 x frequency, 1.5 x time) the fbank's size, the fbank in its centre and zeros
# (the normalised mean) around it; a box of 0.6-1.5 x the fbank's bins by 0.6-1.5 x its frames
# (cut to the canvas) at a random place on the canvas, resized back to the fbank's size
AUDIO_CANVAS = (1.5, 1.0)  # (time, frequency), as fractions of the fbank's frames and bins
AUDIO_BOX_SCALE = ((0.6, 1.5), (0.6, 1.5))  # (time, frequency) ranges of the box


def audio_resize_boxes(B: int, frames: int, bins: int, device: torch.device) -> torch.Tensor:
    """``[B, 4]`` boxes (time start, frequency start, frames, bins) on the canvas of an
    ``[frames, bins]`` fbank (XKD's / BYOL-A's draws: sizes ``int(U * size)`` cut to 1..canvas,
    starts uniform over the whole canvas positions)."""
    canvas = (int(frames * AUDIO_CANVAS[0]), int(bins * AUDIO_CANVAS[1]))
    out = []
    for size, room, (lo, hi) in zip((frames, bins), canvas, AUDIO_BOX_SCALE):
        length = (torch.empty(B, device=device).uniform_(lo, hi) * size).floor().clamp(1, room)
        start = (torch.rand(B, device=device) * (room - length + 1)).floor()
        out.append((start, length))
    return torch.stack([out[0][0], out[1][0], out[0][1], out[1][1]], dim=1)


def _bicubic_rows(start: torch.Tensor, length: torch.Tensor, out: int, room: int) -> torch.Tensor:
    """``[B, out, room]`` matrices that resize each sample's span ``[start, start + length)`` of
    a ``room``-long axis to ``out`` samples as ``F.interpolate(mode="bicubic",
    align_corners=True)`` resizes the cut-out span (A = -0.75; taps past the span's ends repeat
    its end values)."""
    B, dev = start.shape[0], start.device
    pos = torch.arange(out, device=dev, dtype=torch.float32) / max(out - 1, 1)
    src = pos[None] * (length[:, None] - 1)  # [B, out] position within the span
    base = src.floor()
    t = src - base
    a = -0.75
    x = torch.stack([t + 1, t, 1 - t, 2 - t], dim=-1)  # [B, out, 4] distances to the 4 taps
    near = ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    weights = torch.where(x <= 1, near, far)
    taps = base[..., None] + torch.arange(-1, 3, device=dev, dtype=torch.float32)  # [B, out, 4]
    taps = torch.minimum(taps.clamp_min(0), length[:, None, None] - 1) + start[:, None, None]
    mat = torch.zeros(B, out, room, device=dev, dtype=torch.float32)
    return mat.scatter_add_(2, taps.long(), weights)


def audio_resize_crop(audio: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[B, 1, Ta, F]`` fbank views -> the same shape: each sample's canvas box (``boxes``
    ``[B, 4]`` from :func:`audio_resize_boxes`) cut out and resized back to ``[Ta, F]``
    (bicubic, corners aligned, as XKD's), as two batched matrix products."""
    B, _, T, Fb = audio.shape
    canvas = (int(T * AUDIO_CANVAS[0]), int(Fb * AUDIO_CANVAS[1]))
    t0, f0 = (canvas[0] - T) // 2, (canvas[1] - Fb) // 2  # the fbank's corner on the canvas
    board = F.pad(audio[:, 0].float(), (f0, canvas[1] - Fb - f0, t0, canvas[0] - T - t0))
    boxes = boxes.to(torch.float32)
    rows = _bicubic_rows(boxes[:, 0], boxes[:, 2], T, canvas[0])  # [B, T, canvas T]
    cols = _bicubic_rows(boxes[:, 1], boxes[:, 3], Fb, canvas[1])  # [B, F, canvas F]
    out = rows @ board @ cols.transpose(1, 2)  # [B, T, F]
    return out.unsqueeze(1).to(audio.dtype)


def _crop_boxes(B: int, scale: tuple[float, float], device: torch.device) -> torch.Tensor:
    """``[B, 4]`` (width, height, centre x, centre y) as fractions of a square image: area
    fraction uniform in ``scale``, aspect ratio log-uniform in 3/4-4/3; a box that would not
    fit is made square (of the same area), as the random-resized crop's fallback."""
    area = torch.empty(B, device=device).uniform_(*scale)
    log_r = torch.empty(B, device=device).uniform_(math.log(3 / 4), math.log(4 / 3))
    w, h = (area * log_r.exp()).sqrt(), (area / log_r.exp()).sqrt()
    square = (w > 1) | (h > 1)
    w, h = torch.where(square, area.sqrt(), w), torch.where(square, area.sqrt(), h)
    cx = w / 2 + torch.rand(B, device=device) * (1 - w)
    cy = h / 2 + torch.rand(B, device=device) * (1 - h)
    return torch.stack([w, h, cx, cy], dim=1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, ksize: int) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, K, H, W]`` with one ``sigma`` per sample (reflect pad)."""
    B, K, H, W = x.shape
    r = ksize // 2
    pos = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-(pos[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(K, dim=0)  # [B K, k]
    y = x.reshape(1, B * K, H, W)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), kern[:, None, None, :], groups=B * K)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), kern[:, None, :, None], groups=B * K)
    return y.view(B, K, H, W)


def local_video_view(
    video: torch.Tensor,
    frames: int,
    size: int,
    crop_scale: tuple[float, float] = (0.08, 0.4),
    flip_p: float = 0.5,
    grey_p: float = 0.2,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> torch.Tensor:
    """``[B, C, T, H, W]`` normalised clips -> ``[B, C, frames, size, size]`` local views.

    A random window of ``frames`` frames, a random-resized crop (bilinear) with a flip, then
    grey-scale and blur each with their probability, all drawn per sample from the global RNG
    of the tensor's device. Colours are un-normalised (ImageNet mean and std, the loader's)
    for the grey-scale and normalised again.
    """
    B, C, T, H, W = video.shape
    clip = _time_window(video, 2, frames).transpose(1, 2).reshape(B * frames, C, H, W)
    w, h, cx, cy = _crop_boxes(B, crop_scale, video.device).unbind(1)
    flip = torch.rand(B, device=video.device) < flip_p
    theta = torch.zeros(B, 2, 3, device=video.device, dtype=torch.float32)
    theta[:, 0, 0] = torch.where(flip, -w, w)  # output x in [-1, 1] -> input x
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(
        theta.repeat_interleave(frames, dim=0), [B * frames, C, size, size], align_corners=False
    )
    out = F.grid_sample(clip.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # fmt: skip
    out = out.view(B, frames, C, size, size).transpose(1, 2)  # [B, C, frames, S, S]
    if grey_p > 0 and C == 3:
        mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=out.device).view(1, 3, 1, 1, 1)
        luma = torch.tensor(LUMA, device=out.device).view(1, 3, 1, 1, 1)
        grey = ((out * std + mean) * luma).sum(dim=1, keepdim=True)  # [B, 1, frames, S, S]
        pick = (torch.rand(B, device=out.device) < grey_p).view(B, 1, 1, 1, 1)
        out = torch.where(pick, (grey - mean) / std, out)
    return blur_views(out, blur_p, blur_sigma).to(video.dtype)


def blur_views(
    video: torch.Tensor, p: float, sigma: tuple[float, float] = (0.1, 2.0)
) -> torch.Tensor:
    """``[B, C, T, S, S]`` clips, each blurred with probability ``p`` (Gaussian, ``sigma``
    uniform in the range, kernel ``S // 20 * 2 + 1`` as XKD's, every frame alike)."""
    if p <= 0:
        return video
    B, C, T, S, _ = video.shape
    x = video.float()
    sig = torch.empty(B, device=x.device).uniform_(*sigma)
    blurred = _gaussian_blur(x.reshape(B, C * T, S, S), sig, S // 20 * 2 + 1)
    pick = (torch.rand(B, device=x.device) < p).view(B, 1, 1, 1, 1)
    return torch.where(pick, blurred.view_as(x), x).to(video.dtype)


def loader_spec(
    cfg: dict, audio_patch: int, tubelet: int, patch: int, sizes: tuple[int, int, int]
) -> LocalViewSpec:
    """The loader's local view for XKD's options ``cfg`` (``local_*``) and clips of ``sizes``
    = (frames, crop size, fbank frames): frames, side and fbank frames rounded down to whole
    tubelets / patches as :func:`whole_units`; crop, flip, colour jitter, grey-scale and
    volume of the local view (the blur and the audio's resize crop come on the device)."""
    frames, crop, audio_frames = sizes
    ratio, gain = cfg["local_temporal_ratio"], cfg["local_gain_db"]
    return LocalViewSpec(
        frames=whole_units(frames, ratio, tubelet),
        size=whole_units(crop, cfg["local_spatial_ratio"], patch),
        audio_frames=whole_units(audio_frames, ratio, audio_patch),
        augment={
            "crop": "random",
            "crop_scale": list(cfg["local_crop_scale"]),
            "flip_p": cfg["local_flip_p"],
            "jitter": cfg["local_jitter"],
            "jitter_p": cfg["local_jitter_p"],
            "hue": cfg["local_hue"],
            "grey_p": cfg["local_grey_p"],
            "gain_db": gain,
            "gain_p": 1.0 if gain > 0 else 0.0,
        },
    )


def tokens_and_attention(enc: ViTEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output tokens ``[B, N, D]`` (as ``enc.forward_features(x)``) and the
    attention each token receives in the last block, averaged over heads and queries
    ``[B, N]`` (sums to 1 over N)."""
    grid = enc.grid_size(x.shape)
    tokens = enc.patch_embed(x) + enc.pos_embed_for(grid)  # [B, N, D]
    for blk in enc.blocks[:-1]:
        tokens = blk(tokens)
    last: Block = enc.blocks[-1]  # type: ignore[assignment]
    attn = last.attn
    B, N, D = tokens.shape
    qkv = attn.qkv(last.norm1(tokens)).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k = qkv.permute(2, 0, 3, 1, 4).unbind(0)[:2]  # [B, h, N, Dh]
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)  # [B, h, N, N]
    return enc.norm(last(tokens)), probs.mean(dim=(1, 2))


def attention_pool(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` tokens, ``[B, N]`` weights -> ``[B, D]``: the mean of the weighted tokens,
    rescaled to the norm of the plain token mean (XKD's energy-preserving re-weighting)."""
    plain = tokens.mean(dim=1)
    weighted = (tokens * weights.unsqueeze(-1).to(tokens.dtype)).mean(dim=1)
    ratio = plain.norm(dim=-1, keepdim=True) / weighted.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return weighted * ratio
