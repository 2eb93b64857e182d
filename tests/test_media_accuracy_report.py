"""The media-accuracy report judges each window set against the 3 dB target on its own."""

from __future__ import annotations

from benchmarks.media_accuracy import report


def figures(video_gain: float, audio_gain: float) -> dict[str, float]:
    return {"psnr_image": 14.0 + video_gain, "baseline_psnr_image": 14.0,
            "psnr_audio": 36.0 + audio_gain, "baseline_psnr_audio": 36.0}


def test_test_windows_and_the_last_20_percent_are_judged_separately():
    av = {**figures(2.0, 10.0), "last_20_percent": figures(4.0, 9.0)}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report(None, av) if line.startswith("| video") or
            line.startswith("| audio")}
    assert rows["video, test (last 10%)"].endswith("| +2.00 | NOT met |")
    assert rows["video, last 20% (validation + test)"].endswith("| +4.00 | met |")
    assert rows["audio, test (last 10%)"].endswith("| +10.00 | met |")
    assert rows["audio, last 20% (validation + test)"].endswith("| +9.00 | met |")


def test_results_stored_without_the_last_20_percent_report_the_test_windows_only():
    lines = [line for line in report(None, figures(3.5, -0.5)) if line.startswith(("| video", "| audio"))]
    assert lines == ["| video, test (last 10%) | 17.50 | 14.00 | +3.50 | met |",
                     "| audio, test (last 10%) | 35.50 | 36.00 | -0.50 | NOT met |"]
