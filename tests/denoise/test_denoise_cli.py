import numpy as np
import pytest
import torch

from nonlocalnet.cli import main
from nonlocalnet.denoise import nl_means, psnr
from nonlocalnet.denoise.io import read_image, write_image

skimage = pytest.importorskip("skimage")
from skimage import data, transform  # noqa: E402


def _bundled(name, size):
    img = getattr(data, name)().astype(np.float64) / 255
    img = transform.resize(img, (size, size, *img.shape[2:]), anti_aliasing=True)
    t = torch.from_numpy(img).float()
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("name", ["camera", "astronaut", "coins"])
def test_psnr_improves_on_bundled_images(name):
    clean = _bundled(name, 96)
    gen = torch.Generator().manual_seed(0)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    assert psnr(nl_means(noisy), clean) > psnr(noisy, clean) + 4


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_cli_denoises_image_files(tmp_path, capsys, suffix):
    clean = _bundled("astronaut" if suffix == ".jpg" else "camera", 96)
    gen = torch.Generator().manual_seed(1)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    src, dst = tmp_path / f"noisy{suffix}", tmp_path / f"clean{suffix}"
    write_image(src, noisy)
    assert main(["denoise", str(src), "-o", str(dst), "--no-progress"]) == 0
    assert "->" in capsys.readouterr().out
    out = read_image(dst)
    assert out.shape == clean.shape
    # JPEG's own compression already smooths part of the noise: a smaller margin there
    assert psnr(out, clean) > psnr(read_image(src), clean) + (3 if suffix == ".png" else 1.5)


def test_cli_denoises_a_video(tmp_path):
    av = pytest.importorskip("av")
    t, h, w = 6, 32, 48
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    clean = torch.stack(
        [(0.5 + 0.3 * torch.sin(6 * xx + 0.3 * i) * torch.cos(4 * yy)).expand(3, h, w) for i in range(t)]
    )
    gen = torch.Generator().manual_seed(2)
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    src, dst = tmp_path / "noisy.mp4", tmp_path / "clean.mp4"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for frame in noisy:
            arr = (frame.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())
    assert main(["denoise", str(src), "-o", str(dst), "--search-window", "9", "--no-progress"]) == 0
    with av.open(str(dst)) as container:
        frames = [
            torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
            for f in container.decode(video=0)
        ]
    assert len(frames) == t
    assert psnr(torch.stack(frames), clean) > psnr(noisy, clean) + 2


def test_cli_errors(tmp_path, capsys):
    assert main(["denoise", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    write_image(tiny, torch.rand(1, 8, 8))
    assert main(["denoise", str(tiny), "-o", str(tmp_path / "o.png")]) == 2
    assert "need an image larger than" in capsys.readouterr().err


def test_cli_returns_a_noise_free_image_unchanged(tmp_path):
    """Issue 17 item 14 through the CLI: no noise found, no --h given: the image comes back."""
    img = torch.full((3, 32, 32), 64 / 255)
    img[:, 8:24, 4:20] = 192 / 255
    src, dst = tmp_path / "flat.png", tmp_path / "out.png"
    write_image(src, img)
    assert main(["denoise", str(src), "-o", str(dst), "--no-progress"]) == 0
    assert torch.equal(read_image(dst), read_image(src))
