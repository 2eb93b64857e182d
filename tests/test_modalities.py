"""The modality kit's input pieces against independent references: loops, NumPy formulas, librosa."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_mt.model.init import fan_in_init_
from perceiver_mt.modalities import (
    FeatureProjection, GridPatches, ImagePatches, LogMelPatches, TaskInputError, TokenAdapter, VideoPatches,
    WaveformPatches, check_audio, check_images, check_video, decode_bytes, depth_to_space, encode_texts, load_audio,
    log_frequency_filters, log_mel_spectrogram, space_to_depth,
)
from perceiver_mt.modalities.audio import fit_length, power_spectrogram, shift_pitch
from perceiver_mt.modalities.text import MASK_ID, PAD_ID, ByteAdapter
from references import brute_force_patches, numpy_fourier

RNG = np.random.default_rng(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.from_numpy(RNG.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("shape,block", [((2, 8, 12, 3), (4, 2)), ((1, 4, 6, 10, 2), (2, 3, 5)), ((3, 12, 1), (4,))])
def test_space_to_depth_matches_a_loop_over_blocks_and_inverts(shape, block):
    x = rand(*shape)
    out = space_to_depth(x, block)
    grid = [d // b for d, b in zip(shape[1:-1], block)]
    assert out.shape == (shape[0], *grid, int(np.prod(block)) * shape[-1])
    np.testing.assert_array_equal(out.reshape(shape[0], -1, out.shape[-1]).numpy(), brute_force_patches(x, block))
    torch.testing.assert_close(depth_to_space(out, block), x, rtol=0, atol=0)


def test_space_to_depth_rejects_a_grid_it_cannot_cut():
    with pytest.raises(ValueError, match=r"grid \(10, 8\) cannot be cut into blocks \(4, 4\)"):
        space_to_depth(rand(1, 10, 8, 1), (4, 4))


@pytest.mark.parametrize("size,patch,channels", [((28, 28), 4, 1), ((12, 20), 4, 3), ((5, 7), 1, 1)])
def test_image_patches_are_patches_then_fourier_features_of_the_patch_grid(size, patch, channels):
    H, W = size
    images = rand(2, H, W) if channels == 1 else rand(2, H, W, channels)
    patches = ImagePatches(size, channels, patch, num_bands=3)
    features = patches(images)
    grid = (H // patch, W // patch)
    content = brute_force_patches(images.reshape(2, H, W, channels).numpy(), (patch, patch))
    assert features.shape == (2, grid[0] * grid[1], patch * patch * channels + 2 * 7)
    assert patches.channel_groups == (patch * patch * channels, 14) and patches.num_tokens == grid[0] * grid[1]
    np.testing.assert_array_equal(features[..., :patch * patch * channels].numpy(), content)
    np.testing.assert_allclose(features[0, :, patch * patch * channels:].numpy(), numpy_fourier(grid, 3, grid), atol=1e-6)


def test_learned_image_positions_are_trainable_per_patch():
    patches = ImagePatches((8, 8), patch_size=2, position="learned", learned_channels=5)
    features = patches(rand(3, 8, 8))
    assert features.shape == (3, 16, 4 + 5)
    features.sum().backward()
    assert patches.position.embedding.grad.shape == (16, 5)
    with pytest.raises(ValueError, match="position='sinusoid' is unknown; choose one of fourier, learned"):
        ImagePatches((8, 8), position="sinusoid")


def test_video_patches_in_time_and_space_with_3d_fourier():
    video = rand(2, 4, 8, 12, 3)  # (B, T, H, W, C)
    patches = VideoPatches((4, 8, 12), channels=3, patch_size=4, temporal_patch=2, num_bands=2, max_resolution=(4, 8, 12))
    features = patches(video)
    assert features.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3 + 3 * 5)
    np.testing.assert_array_equal(features[..., :96].numpy(), brute_force_patches(video.numpy(), (2, 4, 4)))
    np.testing.assert_allclose(features[1, :, 96:].numpy(), numpy_fourier((2, 2, 3), 2, (4, 8, 12)), atol=1e-6)


def test_two_frames_with_a_temporal_patch_of_two_stack_both_frames_per_token():
    """Optical flow's input: each token holds the 3x3 patch of frame 1, then of frame 2, channels interleaved
    per (frame, row, column) as DeepMind's space-to-depth orders them."""
    frames = rand(1, 2, 6, 6, 1)
    features = VideoPatches((2, 6, 6), channels=1, patch_size=3, temporal_patch=2).content(frames)
    assert features.shape == (1, 4, 18)
    torch.testing.assert_close(features[0, 1, :9], frames[0, 0, 0:3, 3:6, 0].reshape(-1))
    torch.testing.assert_close(features[0, 1, 9:], frames[0, 1, 0:3, 3:6, 0].reshape(-1))


def test_waveform_patches_are_deepminds_reshape_with_1d_fourier():
    waveform = rand(2, 960)
    patches = WaveformPatches(960, samples_per_patch=96, num_bands=4)
    features = patches(waveform)
    np.testing.assert_array_equal(features[..., :96].numpy(), waveform.reshape(2, -1, 96).numpy())
    np.testing.assert_allclose(features[0, :, 96:].numpy(), numpy_fourier((10,), 4, (10,)), atol=1e-6)

@pytest.mark.slow

def test_log_mel_matches_librosa():
    librosa = pytest.importorskip("librosa")
    sr = 16000
    t = np.arange(4000) / sr
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * RNG.standard_normal(len(t))).astype(np.float32)
    ours = log_mel_spectrogram(torch.from_numpy(wave)[None], sr, n_fft=400, hop_length=160, n_mels=40)[0]
    theirs = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=400, hop_length=160, n_mels=40, center=True,
                                            pad_mode="constant", power=2.0)  # (n_mels, frames)
    assert ours.shape == (1 + 4000 // 160, 40) == theirs.T.shape
    np.testing.assert_allclose(ours.numpy(), np.log(theirs.T + 1e-6), atol=2e-3)


def test_log_mel_patches_crop_to_whole_patches_and_standardise_each_clip():
    mel = LogMelPatches(num_samples=4000, sample_rate=16000, n_fft=400, hop_length=160, n_mels=32, patch=(4, 8),
                        num_bands=2)
    waveform = rand(2, 4000)
    features = mel(waveform)
    assert mel.frames == 24  # 26 frames, cropped to 6 patches of 4
    assert features.shape == (2, 6 * 4, 32 + 2 * 5) and mel.num_tokens == 24
    log_mel = mel.log_mel(waveform * 10)  # louder: the same after standardising
    torch.testing.assert_close(log_mel, mel.log_mel(waveform), atol=1e-3, rtol=0)
    assert abs(float(log_mel[1].mean())) < 1e-4 and abs(float(log_mel[1].std()) - 1) < 1e-3
    raw = log_mel_spectrogram(waveform[:1], 16000, 400, 160, 32)[:, :24]
    torch.testing.assert_close(mel.log_mel(waveform[:1]), (raw - raw.mean()) / raw.std())


def test_grid_positions_on_some_axes_only_repeat_along_the_others():
    grid = GridPatches((8, 12), (2, 3), 1, num_bands=3, position_axes=(0,))
    x = rand(2, 8, 12, 1)
    features = grid(x)
    full = GridPatches((8, 12), (2, 3), 1, num_bands=3)
    torch.testing.assert_close(features[..., :6], full(x)[..., :6])  # content as before
    codes = features[..., 6:].reshape(2, 4, 4, -1)  # (B, time blocks, frequency blocks, P)
    assert codes.shape[-1] == 1 + 2 * 3  # a 1D code: one axis, 3 bands
    torch.testing.assert_close(codes, codes[:, :, :1].expand_as(codes))  # the same along axis 1
    assert not torch.equal(codes[:, 0], codes[:, 1])  # and different along axis 0
    shifted = torch.roll(x, 3, dims=2)  # a whole block along the uncoded axis: the same set of tokens
    rows = lambda f: sorted(map(tuple, f.reshape(-1, f.shape[-1]).tolist()))  # noqa: E731
    assert rows(grid(shifted)) == rows(features) and rows(full(shifted)) != rows(full(x))
    with pytest.raises(ValueError, match=r"position_axes=\(2,\) must name at least one axis of a 2-axis grid"):
        GridPatches((8, 12), (2, 3), position_axes=(2,))


def test_log_frequency_bands_turn_a_pitch_change_into_a_shift():
    sr, n_fft, bins, f_min, f_max = 16000, 1024, 48, 100.0, 3200.0  # 5 octaves, 9.4 bands per octave
    filters = log_frequency_filters(sr, n_fft, bins, f_min, f_max)
    assert filters.shape == (bins, n_fft // 2 + 1)
    torch.testing.assert_close(filters.sum(1), torch.ones(bins))
    centres = np.geomspace(f_min, f_max, bins)  # an independent spelling of "equally spaced in log frequency"
    hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    assert np.abs(hz[filters.argmax(1).numpy()] - centres).max() <= sr / n_fft  # each peaks at its centre
    t = np.arange(8000) / sr
    voice = sum(np.sin(2 * np.pi * h * 180 * t) / h for h in range(1, 8)).astype(np.float32)  # 180 Hz, 7 harmonics
    power = power_spectrogram(torch.from_numpy(voice)[None], n_fft, 160)
    k = 6  # a pitch step of k bands
    higher = shift_pitch(power, torch.tensor([(f_max / f_min) ** (k / (bins - 1))]))
    profile = lambda p: torch.log(torch.einsum("mf,bft->bm", filters, p)[0] + 1e-6)  # noqa: E731
    low, high = profile(power), profile(higher)
    lags = {lag: float(torch.corrcoef(torch.stack([low[8:-12], high[8 + lag:bins - 12 + lag]]))[0, 1])
            for lag in range(-4, 11)}
    assert max(lags, key=lags.get) == k and lags[k] > 0.95  # the same harmonic comb, k bands up
    with pytest.raises(ValueError, match="log-frequency bins need 0 < f_min < f_max <= 8000 Hz"):
        log_frequency_filters(sr, n_fft, bins, 0.0, f_max)


def test_log_frequency_patches_coded_in_time_only():
    mel = LogMelPatches(4000, 16000, n_fft=1024, n_mels=32, patch=(4, 8), num_bands=2, f_min=80.0, f_max=2000.0,
                        scale="log", frequency_position=False)
    features = mel(rand(2, 4000))
    assert features.shape == (2, 6 * 4, 32 + 1 + 2 * 2)  # 6 x 4 tokens, a 1D position code
    codes = features[..., 32:].reshape(2, 6, 4, -1)
    torch.testing.assert_close(codes, codes[:, :, :1].expand_as(codes))
    with pytest.raises(ValueError, match="frequency scale 'bark' is unknown; choose one of mel, log"):
        LogMelPatches(4000, 16000, scale="bark")


def test_load_audio_decodes_mixes_down_and_resamples(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    rate = 44100
    t = np.arange(rate // 2) / rate
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "tone.flac"
    soundfile.write(path, np.stack([left, right], axis=1), rate)
    stereo, got_rate = load_audio(path, mono=False)
    assert stereo.shape == (2, rate // 2) and got_rate == rate
    mono, got_rate = load_audio(path, sample_rate=16000)
    assert got_rate == 16000 and mono.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(mono))
    assert abs(np.argmax(spectrum) * 16000 / len(mono) - 440) <= 2  # the tone survives resampling
    assert abs(mono[2000:6000].max() - 0.75) < 0.02  # the mean of both channels


def test_fit_length_centres_crops_and_pads():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(x, 4, offset=6), [6, 7, 8, 9])
    np.testing.assert_array_equal(fit_length(x[:2], 5), [0, 0, 1, 0, 0])


def test_bytes_round_trip_with_mask_and_padding():
    ids = encode_texts(["grüße", "a█c"], seq_len=8, mask_char="█")
    assert ids[0].tolist() == list("grüße".encode()) + [PAD_ID]
    assert ids[1].tolist() == [97, MASK_ID, 99] + [PAD_ID] * 5
    assert decode_bytes(ids[0].tolist()) == "grüße"
    assert encode_texts(["abcdefghij"], 4, truncate=True).tolist() == [[97, 98, 99, 100]]
    with pytest.raises(ValueError, match="10 bytes do not fit 4"):
        encode_texts("abcdefghij", 4)
    tokens, pad_mask = ByteAdapter(12, 8, num_bands=4)({"inputs": ids})
    assert tokens.shape == (2, 8, 12) and pad_mask.tolist()[1] == [False] * 3 + [True] * 5


def test_feature_projection_gives_each_group_an_equal_share_and_survives_task_init():
    projection = FeatureProjection((1, 63), 256)
    fan_in_init_(projection)  # what Task.init_weights does to every nn.Linear: must not touch this
    one, many = projection.weight[:, :1], projection.weight[:, 1:]
    share_one = float(one.detach().square().sum())
    share_many = float(many.detach().square().sum())
    assert 0.7 < share_one / share_many < 1.4  # one channel weighs as much as the other 63 together
    adapter = TokenAdapter(GridPatches((4, 4), (2, 2), num_bands=2), 16)
    assert adapter({"inputs": rand(3, 4, 4, 1)}).shape == (3, 4, 16)


def test_bad_inputs_get_one_line_naming_the_task():
    with pytest.raises(TaskInputError, match=r"^task 'mnist' takes images of shape \(B, 28, 28\) .*got \(2, 32, 32\)$"):
        check_images("mnist", torch.zeros(2, 32, 32), (28, 28))
    check_images("mnist", torch.zeros(2, 28, 28), (28, 28))
    check_images("mnist", torch.zeros(2, 28, 28, 1), (28, 28))
    with pytest.raises(TaskInputError, match=r"^task 'tones' takes mono audio .*got 2-channel audio \(4, 2, 8000\).*one channel$"):
        check_audio("tones", torch.zeros(4, 2, 8000), 8000, 16000)
    with pytest.raises(TaskInputError, match=r"^task 'tones' takes mono audio of shape \(B, 8000\) \(0.5 s at 16000 Hz\), "
                                             r"got \(4, 4000\) float32$"):
        check_audio("tones", torch.zeros(4, 4000), 8000, 16000)
    with pytest.raises(TaskInputError, match=r"task 'clips' takes video of shape \(B, 2, 8, 8, 3\)"):
        check_video("clips", torch.zeros(1, 3, 8, 8, 3), (2, 8, 8))


def test_shift_pitch_moves_a_tone_and_keeps_its_timing():
    from perceiver_mt.modalities.audio import power_spectrogram, shift_pitch

    sr, n_fft = 16000, 512
    t = np.arange(4000) / sr
    tone = torch.from_numpy(np.sin(2 * np.pi * 500 * t).astype(np.float32))[None].repeat(2, 1)
    power = power_spectrogram(tone, n_fft, 160)
    shifted = shift_pitch(power, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(shifted[0], power[0])
    peak = lambda p: int(p[:, 10].argmax()) * sr / n_fft  # noqa: E731  (Hz of the strongest bin, one frame)
    assert abs(peak(power[1]) - 500) <= sr / n_fft and abs(peak(shifted[1]) - 1000) <= sr / n_fft
    lower = shift_pitch(power, torch.tensor([0.5, 0.5]))
    assert abs(peak(lower[1]) - 250) <= sr / n_fft
    assert float(lower[:, 129:].max()) == 0.0  # an octave down: the top half would come from above the top bin
    mel = LogMelPatches(4000, sr, n_fft=n_fft, n_mels=32, patch=(4, 8), pitch_shift=2.0)
    mel.eval()
    torch.testing.assert_close(mel(tone), mel(tone))  # evaluation: never shifted
    mel.train()
    assert not torch.equal(mel(tone), mel(tone))
