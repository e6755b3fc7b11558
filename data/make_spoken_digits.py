"""Regenerate ``q4core/datasets/spoken_digits.npz`` (package data, shipped in the wheel): English spoken digits 0-9
synthesised offline with espeak-ng.

Usage (espeak-ng is needed only here, never by users of the data)::

    apt-get install -y espeak-ng
    python data/make_spoken_digits.py [--seed 0] [--renditions 3] [--out q4core/datasets/spoken_digits.npz]

What it does, step by step (every random draw comes from ``numpy.random.default_rng(seed)`` in a fixed order,
and espeak-ng is deterministic, so the same seed and espeak-ng version give a byte-identical file):

1. Speakers are espeak-ng voice *variants* (``espeak-ng --voices=variant``: m1..m8, f1..f5, klatt, Alicia, ...),
   each a distinct voice quality.  A speaker is the unit of the train/validation/test split in
   :func:`q4core.data.load_spoken_digits`, so test speakers are never heard in training.
2. Each speaker says every digit word ("zero" .. "nine") ``renditions`` times; each rendition draws an English
   accent (one of eight espeak-ng English voices), a speed (words per minute), a pitch, a gain, a time offset and
   a background noise (white, pink or brown at a random signal-to-noise ratio).  A word that would not fit in
   the clip is re-synthesised 15% faster until it does (the speed stored is the one used).
3. The 22,050 Hz waveform is trimmed of leading/trailing silence, placed at the drawn offset in a 1.003 s buffer,
   mixed with the noise and turned into a log-mel spectrogram with :func:`log_mel_spectrogram` (plain numpy:
   periodic Hann window, real FFT, triangular HTK-mel filters, power in dB).
4. Features are stored as uint8 codes in 0.5 dB steps above ``DB_FLOOR`` (a lossless choice at the noise
   levels used - the added noise varies far more than 0.5 dB - that keeps the file a few MB);
   :func:`q4core.data.load_spoken_digits` turns them back into float32 dB.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The eight English accents espeak-ng 1.51 ships as its own (non-MBROLA) voices.
ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
# Variants left out: "Mr serious" (a space in its name breaks the voice syntax), "fast" (a test voice that only
# changes speed, which we draw ourselves) and "Demonic" (heavily distorted, not a plausible talker).
EXCLUDED_VARIANTS = frozenset({"Mr serious", "fast", "Demonic"})

SAMPLE_RATE = 22050          # espeak-ng's native output rate
N_FFT = 512                  # 23.2 ms analysis window
HOP = 441                    # 20 ms between frames
N_FRAMES = 50                # 1.003 s of audio per clip
N_MELS = 32
FMIN_HZ, FMAX_HZ = 50.0, 8000.0
CLIP_SAMPLES = N_FFT + (N_FRAMES - 1) * HOP
DB_FLOOR = -100.0            # uint8 code 0; code c means DB_FLOOR + c * DB_STEP
DB_STEP = 0.5

SPEED_WPM = (110, 260)       # espeak-ng -s range drawn uniformly (its default is 175)
PITCH = (15, 85)             # espeak-ng -p range (0..99, default 50)
GAIN_DB = (-20.0, 0.0)       # peak level of the speech
SNR_DB = (5.0, 30.0)         # speech power over noise power
NOISE_COLOURS = ("white", "pink", "brown")


#: where the loader (q4core.data.load_spoken_digits) reads it: inside the package, so wheels ship it
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "q4core" / "datasets" / "spoken_digits.npz"

def hz_to_mel(hz):
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN_HZ, fmax=FMAX_HZ):
    """Triangular filters, shape ``(n_mels, n_fft // 2 + 1)``, peak 1, centres equally spaced in HTK mel.

    Filter ``m`` rises linearly from centre ``m-1`` to centre ``m`` and falls to centre ``m+1``; the weights are
    evaluated at the exact FFT bin frequencies (no rounding of edges to bins), so narrow low filters still see
    the bins between their edges.
    """
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel_spectrogram(wave, sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop=HOP, n_mels=N_MELS):
    """Log-mel power in dB, shape ``(frames, n_mels)``, of a 1-D float waveform (no padding, frames fully inside).

    ``10 * log10(mel power + 1e-10)`` where the power spectrum is ``|rfft(periodic Hann * frame)|**2``.
    """
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or wave.size < n_fft:
        raise ValueError(f"wave must be 1-D with at least n_fft={n_fft} samples, got shape {wave.shape}")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel_power = power @ mel_filterbank(sample_rate, n_fft, n_mels).T
    return 10.0 * np.log10(mel_power + 1e-10)


def list_variants():
    """Voice variant file names reported by ``espeak-ng --voices=variant``, sorted, minus the excluded ones."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        # columns: Pty Language Age/Gender VoiceName File [Other languages]; File is "!v/<name>" and may hold a space
        rest = line.split(None, 4)[4]
        name = rest.split("!v/", 1)[1].split("  ")[0].strip()
        names.add(name)
    return sorted(names - EXCLUDED_VARIANTS, key=str.lower)


def espeak_version():
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    return out.split("Data at")[0].strip()


def synthesise(word, accent, variant, speed, pitch):
    """Mono float64 waveform in [-1, 1] at SAMPLE_RATE from espeak-ng's WAV on stdout."""
    raw = subprocess.run(["espeak-ng", "-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch),
                          "--stdout", word], check=True, capture_output=True).stdout
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise RuntimeError(f"espeak-ng did not return a WAV for {accent}+{variant}")
    rate = int.from_bytes(raw[24:28], "little")
    if rate != SAMPLE_RATE or raw[22:24] != b"\x01\x00" or raw[34:36] != b"\x10\x00":
        raise RuntimeError(f"expected 16-bit mono at {SAMPLE_RATE} Hz from espeak-ng, got rate {rate}")
    # espeak-ng streams to stdout, so the data chunk size in the header is a placeholder: take all bytes after it.
    start = raw.index(b"data", 36) + 8
    body = raw[start:start + (len(raw) - start) // 2 * 2]
    return np.frombuffer(body, dtype="<i2").astype(np.float64) / 32768.0


def trim_silence(wave, threshold=1e-3):
    """Drop leading and trailing samples quieter than ``threshold`` times the peak."""
    loud = np.flatnonzero(np.abs(wave) > threshold * np.abs(wave).max())
    return wave[loud[0]:loud[-1] + 1]


def coloured_noise(rng, n, colour):
    """Unit-power Gaussian noise whose power spectrum falls as 1/f**k (k = 0 white, 1 pink, 2 brown)."""
    k = NOISE_COLOURS.index(colour)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (k / 2.0), n)
    return noise / np.sqrt(np.mean(noise ** 2))


def make_clip(rng, word, accent, variant):
    """Draw one rendition's parameters, synthesise, mix with noise; return (features dB, parameters)."""
    speed = int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    gain_db = float(rng.uniform(*GAIN_DB))
    snr_db = float(rng.uniform(*SNR_DB))
    colour = NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
    speech = trim_silence(synthesise(word, accent, variant, speed, pitch))
    while speech.size > CLIP_SAMPLES:       # a few slow variants (Marco, RicishayMax) overrun at low speeds:
        speed = int(speed * 1.15) + 1       # speak faster rather than crop the word
        speech = trim_silence(synthesise(word, accent, variant, speed, pitch))
    speech *= 10.0 ** (gain_db / 20.0) / np.abs(speech).max()
    offset = int(rng.integers(0, CLIP_SAMPLES - speech.size + 1))
    clip = np.zeros(CLIP_SAMPLES)
    clip[offset:offset + speech.size] = speech
    noise_power = np.mean(speech ** 2) / 10.0 ** (snr_db / 10.0)
    clip += np.sqrt(noise_power) * coloured_noise(rng, CLIP_SAMPLES, colour)
    return log_mel_spectrogram(clip), (speed, pitch, gain_db, snr_db, NOISE_COLOURS.index(colour), speech.size)


def encode_db(features_db):
    """dB -> uint8 codes in DB_STEP steps above DB_FLOOR (round half to even, saturating at 0 and 255)."""
    return np.clip(np.round((features_db - DB_FLOOR) / DB_STEP), 0, 255).astype(np.uint8)


def save_npz_deterministic(path, arrays):
    """Like ``np.savez_compressed`` but with fixed zip timestamps and order, so equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue(), compresslevel=9)
    Path(path).write_bytes(buffer.getvalue())


def build(seed, renditions, log=print):
    rng = np.random.default_rng(seed)
    variants = list_variants()
    rows, feats = [], []
    for speaker, variant in enumerate(variants):
        for digit, word in enumerate(DIGIT_WORDS):
            for _ in range(renditions):
                accent = int(rng.integers(len(ACCENTS)))
                features, params = make_clip(rng, word, ACCENTS[accent], variant)
                feats.append(encode_db(features))
                rows.append((digit, speaker, accent) + params)
        log(f"speaker {speaker + 1}/{len(variants)} {variant}")
    cols = list(zip(*rows))
    return {
        "features_db_code": np.stack(feats),
        "labels": np.array(cols[0], dtype=np.uint8),
        "speaker": np.array(cols[1], dtype=np.int16),
        "accent": np.array(cols[2], dtype=np.uint8),
        "speed_wpm": np.array(cols[3], dtype=np.int16),
        "pitch": np.array(cols[4], dtype=np.uint8),
        "gain_db": np.array(cols[5], dtype=np.float32),
        "snr_db": np.array(cols[6], dtype=np.float32),
        "noise_colour": np.array(cols[7], dtype=np.uint8),
        "speech_samples": np.array(cols[8], dtype=np.int32),
        "speaker_names": np.array(variants),
        "accent_names": np.array(ACCENTS),
        "noise_colour_names": np.array(NOISE_COLOURS),
        "digit_words": np.array(DIGIT_WORDS),
        "db_floor_step": np.array([DB_FLOOR, DB_STEP]),
        "stft": np.array([SAMPLE_RATE, N_FFT, HOP, N_FRAMES, N_MELS, FMIN_HZ, FMAX_HZ]),
        "generator": np.array([f"make_spoken_digits.py seed={seed} renditions={renditions}", espeak_version()]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renditions", type=int, default=3, help="clips per speaker and digit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    arrays = build(args.seed, args.renditions, log=lambda msg: print(msg, file=sys.stderr))
    save_npz_deterministic(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    n = arrays["labels"].size
    print(f"wrote {args.out}: {n} clips, {len(arrays['speaker_names'])} speakers, "
          f"{args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
