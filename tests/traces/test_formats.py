from traces.formats import FORMATS, tunix_sft


def test_tunix_sft_renders_steps_in_order_of_i_numbered_from_one() -> None:
    steps = [
        {"i": 10, "type": "answer", "content": "So it is 4."},
        {"i": 3, "type": "thought", "content": "Two and two.\nAdd them."},
    ]
    assert tunix_sft("2 + 2?", steps, "4") == {
        "prompt": "2 + 2?",
        "completion": "\nStep 1 (thought): Two and two.\nAdd them.\n"
        "Step 2 (answer): So it is 4.\nAnswer: 4",
    }


def test_tunix_sft_is_the_registered_format() -> None:
    assert {"tunix_sft": tunix_sft} == FORMATS
