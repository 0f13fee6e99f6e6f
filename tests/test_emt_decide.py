"""The EMT outcome decider on hand-written answers, and the prompt builder."""
import pytest

from mcit.emt.decide import (
    CORRECT,
    FREE_TEXT,
    HALLUCINATED,
    LABEL_LIST,
    NO_LABEL,
    SEVERAL_LABELS,
    WRONG_LABEL,
    LabelMatcher,
    build_prompt,
    decide,
    normalize,
    plural_forms,
    summarize,
)

DIGITS = [str(d) for d in range(10)]
DIGIT_WORDS = {str(d): w for d, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])}
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_SYN = {"airplane": ["aeroplane", "plane"], "automobile": "car"}


@pytest.fixture(scope="module")
def digits():
    return LabelMatcher(DIGITS, DIGIT_WORDS)


@pytest.fixture(scope="module")
def cifar():
    return LabelMatcher(CIFAR10, CIFAR10_SYN)


@pytest.mark.parametrize("answer", ["7", "7.", " 7\n", "Seven", "The number in the image is 7.",
                                    "It's a seven!", "Answer: 7", "I think it is 7", "7 (seven)"])
def test_correct_digit_answers(digits, answer):
    d = digits.decide(answer, 7)
    assert (d.outcome, d.label, d.reason) == (CORRECT, 7, None)
    assert d.correct


@pytest.mark.parametrize("answer", ["cat", "Cat.", "A cat", "It is a cat.", "The object in the image is a cat",
                                    "This picture shows the cat", "CAT!!", "cats", "Cats."])
def test_correct_object_answers(cifar, answer):
    assert cifar.decide(answer, "cat").outcome == CORRECT


def test_wrong_label(cifar, digits):
    d = cifar.decide("It is a dog.", "cat")
    assert (d.outcome, d.label, d.reason) == (WRONG_LABEL, CIFAR10.index("dog"), None)
    assert digits.decide("three", 7).outcome == WRONG_LABEL


def test_synonyms_count_as_their_label(cifar):
    for answer in ("an aeroplane", "A plane.", "planes", "aeroplanes"):
        d = cifar.decide(answer, "airplane")
        assert (d.outcome, d.label) == (CORRECT, 0), answer
    assert cifar.decide("a car", "automobile").outcome == CORRECT
    assert cifar.decide("a car", "truck").outcome == WRONG_LABEL
    # a label named by its name and by a synonym is still one label
    assert cifar.decide("airplane (plane)", 0).outcome == CORRECT


def test_plurals():
    m = LabelMatcher(["bus", "butterfly", "wolf", "knife", "man", "woman", "mouse", "fish", "maple tree", "tomato"])
    cases = {"buses": "bus", "butterflies": "butterfly", "wolves": "wolf", "knives": "knife", "men": "man",
             "women": "woman", "mice": "mouse", "fish": "fish", "fishes": "fish", "maple trees": "maple tree",
             "tomatoes": "tomato", "tomatos": "tomato"}
    for answer, target in cases.items():
        d = m.decide(answer, target)
        assert d.outcome == CORRECT, (answer, d)
    assert plural_forms("box") == {"boxes"}
    assert plural_forms("key") == {"keys"}
    assert plural_forms("7") == set()


def test_plural_that_is_another_label_is_not_merged():
    m = LabelMatcher(["glass", "glasses"])
    assert m.decide("glasses", "glasses").outcome == CORRECT
    assert m.decide("glasses", "glass").outcome == WRONG_LABEL


def test_longest_phrase_wins():
    m = LabelMatcher(["truck", "pickup truck", "tree", "maple tree"])
    assert m.decide("a pickup truck", "pickup truck").outcome == CORRECT
    assert m.decide("A maple_tree.", "maple tree").outcome == CORRECT
    d = m.decide("a truck and a maple tree", "truck")
    assert (d.outcome, d.reason) == (HALLUCINATED, SEVERAL_LABELS)


def test_no_label(cifar):
    for answer in ("", "   ", None, "I don't know.", "a bicycle"):
        d = cifar.decide(answer, "cat")
        assert (d.outcome, d.reason, d.label) == (HALLUCINATED, NO_LABEL, None), answer


def test_several_different_labels(cifar, digits):
    d = cifar.decide("cat or dog", "cat")
    assert (d.outcome, d.reason, d.named) == (HALLUCINATED, SEVERAL_LABELS, (3, 5))
    assert digits.decide("7 or 1", 7).reason == SEVERAL_LABELS
    # the same label twice is one label
    assert cifar.decide("cat, cat", "cat").outcome == CORRECT


def test_label_list_echoed_back(cifar, digits):
    d = digits.decide("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", 7)
    assert (d.outcome, d.reason) == (HALLUCINATED, LABEL_LIST)
    echo = "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck"
    assert cifar.decide(echo, "cat").reason == LABEL_LIST
    assert cifar.decide("One of: cat, dog, bird, frog, horse", "cat").reason == LABEL_LIST
    # a three-label set echoed in full
    assert LabelMatcher(["red", "green", "blue"]).decide("red, green or blue", "red").reason == LABEL_LIST


def test_free_text(cifar, digits):
    d = digits.decide("The airplane is 8.", 8)  # EMT's example of an MNIST-tuned model's drift
    assert (d.outcome, d.reason, d.named, d.extra) == (HALLUCINATED, FREE_TEXT, (8,), ("airplane",))
    assert cifar.decide("a black cat sitting on a mat", "cat").reason == FREE_TEXT
    assert cifar.decide("It is not a cat.", "cat").reason == FREE_TEXT  # negation is not understood
    relaxed = cifar.decide("a black cat", "cat", max_extra_words=1)
    assert relaxed.outcome == CORRECT and relaxed.extra == ("black",)


def test_normalisation():
    assert normalize("It's an Aquarium_Fish!") == ["it", "s", "an", "aquarium", "fish"]
    m = LabelMatcher(["aquarium_fish", "lawn-mower", "sweet pepper"])
    assert m.decide("Aquarium fish.", 0).outcome == CORRECT
    assert m.decide("a lawn mower", "lawn-mower").outcome == CORRECT
    assert m.decide("SWEET-PEPPERS", "sweet pepper").outcome == CORRECT
    assert m.target_index("Lawn Mower") == 1


def test_label_set_errors():
    with pytest.raises(ValueError, match="reads the same"):
        LabelMatcher(["Cat", "cat."])
    with pytest.raises(ValueError, match="reads the same"):
        LabelMatcher(["cat", "dog"], {"cat": ["dog"]})
    with pytest.raises(ValueError, match="not a label"):
        LabelMatcher(["cat", "dog"], {"cow": ["bovine"]})
    with pytest.raises(ValueError, match="at least 2"):
        LabelMatcher(["cat"])
    m = LabelMatcher(["cat", "dog"])
    with pytest.raises(ValueError, match="not a label"):
        m.decide("cat", "cow")
    with pytest.raises(ValueError, match="outside"):
        m.decide("cat", 2)


def test_decide_function_and_summary():
    answers = [("7", 7), ("3", 7), ("7 or 3", 7), ("banana", 7)]
    decisions = [decide(a, DIGITS, DIGIT_WORDS, target=t) for a, t in answers]
    assert [d.outcome for d in decisions] == [CORRECT, WRONG_LABEL, HALLUCINATED, HALLUCINATED]
    s = summarize(decisions)
    assert s["n"] == 4 and s["accuracy"] == 25.0
    assert s["shares"] == {CORRECT: 25.0, WRONG_LABEL: 25.0, HALLUCINATED: 50.0}
    assert s["hallucination_reasons"][SEVERAL_LABELS] == 1 and s["hallucination_reasons"][NO_LABEL] == 1
    assert summarize([])["accuracy"] == 0.0


def test_build_prompt():
    p = build_prompt(DIGITS, noun="number")
    assert p == ("What is the number in the image? Please answer with a single number from this list: "
                 "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9].")
    assert "[airplane, automobile," in build_prompt(CIFAR10)
    assert build_prompt(["a", "b"], template="Pick one {noun}: {labels}") == "Pick one object: a, b"
    with pytest.raises(ValueError):
        build_prompt([])
