"""Answer-choice tasks, 3-shot: BoolQ, CommonsenseQA, RACE and WinoGrande, first generated line exact match.

Templates follow the study's ``boolq_question_answer_template``, ``commonsense_qa_question_answer_template``,
``race_question_answer_template`` and ``winogrande_question_answer_template`` (``lib/eval.py``); the
answer is the generated text before the first newline, compared case-insensitively with the gold
``true``/``false``, letter or option number. The exemplars are the study's, including its first
WinoGrande exemplar (a RACE question pasted into the WinoGrande template), kept so numbers stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..fewshot import Example, FewShotTask

__all__ = ["BOOLQ", "COMMONSENSE_QA", "RACE", "WINOGRANDE"]

_LETTERS = "ABCDEFGH"


def _lettered(options: list[str] | tuple[str, ...]) -> str:
    return "\n".join(f"{_LETTERS[index]}. {option}" for index, option in enumerate(options))


@dataclass(frozen=True)
class _LineAnswerTask(FewShotTask):
    stop: str = "\n"
    max_new_tokens: int = 20


@dataclass(frozen=True)
class _BoolQTask(_LineAnswerTask):
    key_fields: tuple[str, ...] = ("question",)

    def render(self, example: Example, answer: str | None) -> str:
        text = f"Question: {example.fields['passage']} {example.fields['question']}\nAnswer:"
        return text if answer is None else f"{text} {answer}"

    def parse_row(self, row: Mapping[str, Any]) -> Example:
        label = row["label"] if "label" in row else row["answer"]
        label = str(label).lower() if isinstance(label, (bool, str)) else ("false", "true")[int(label)]
        return Example(fields={"passage": row["passage"], "question": row["question"]}, label=label)


@dataclass(frozen=True)
class _CommonsenseQATask(_LineAnswerTask):
    key_fields: tuple[str, ...] = ("question",)

    def render(self, example: Example, answer: str | None) -> str:
        text = f"Question: {example.fields['question']}\nChoices:\n{example.fields['choices']}\nAnswer:"
        return text if answer is None else f"{text} {answer}"

    def parse_row(self, row: Mapping[str, Any]) -> Example:
        choices = row["choices"]
        if isinstance(choices, Mapping):  # Hub schema: {"label": [...], "text": [...]}, answerKey
            texts, label = list(choices["text"]), row["answerKey"]
        else:  # distilling step-by-step schema: list of texts, answer = text of the right one
            texts = list(choices)
            label = _LETTERS[texts.index(row["answer"])]
        return Example(fields={"question": row["question"], "choices": _lettered(texts)}, label=label)


@dataclass(frozen=True)
class _RACETask(_LineAnswerTask):
    # A row sharing its article with the exemplars is left out, not just the exemplar questions.
    key_fields: tuple[str, ...] = ("article",)

    def render(self, example: Example, answer: str | None) -> str:
        fields = example.fields
        text = f"Article: {fields['article']}\nQuestion: {fields['question']}\nOptions:\n{fields['options']}\nAnswer:"
        return text if answer is None else f"{text} {answer}"

    def parse_row(self, row: Mapping[str, Any]) -> Example:
        fields = {"article": row["article"], "question": row["question"], "options": _lettered(row["options"])}
        return Example(fields=fields, label=str(row["answer"]).strip())


@dataclass(frozen=True)
class _WinoGrandeTask(_LineAnswerTask):
    key_fields: tuple[str, ...] = ("sentence",)

    def render(self, example: Example, answer: str | None) -> str:
        fields = example.fields
        text = f"Sentence: {fields['sentence']}\nOptions:\n1. {fields['option1']}\n2. {fields['option2']}\nAnswer:"
        return text if answer is None else f"{text} {answer}"

    def parse_row(self, row: Mapping[str, Any]) -> Example:
        fields = {"sentence": row["sentence"], "option1": row["option1"], "option2": row["option2"]}
        return Example(fields=fields, label=str(row["answer"]).strip())


def _boolq(passage: str, question: str, label: str) -> Example:
    return Example(fields={"passage": passage, "question": question}, label=label)


BOOLQ_EXEMPLARS = (
    _boolq(
        "Persian (/ˈpɜːrʒən, -ʃən/), also known by its endonym Farsi (فارسی fārsi (fɒːɾˈsiː) ( listen)), is one of the Western Iranian languages within the Indo-Iranian branch of the Indo-European language family. It is primarily spoken in Iran, Afghanistan (officially known as Dari since 1958), and Tajikistan (officially known as Tajiki since the Soviet era), and some other regions which historically were Persianate societies and considered part of Greater Iran. It is written in the Persian alphabet, a modified variant of the Arabic script, which itself evolved from the Aramaic alphabet.",
        "do iran and afghanistan speak the same language",
        "true",
    ),
    _boolq(
        "Good Samaritan laws offer legal protection to people who give reasonable assistance to those who are, or who they believe to be, injured, ill, in peril, or otherwise incapacitated. The protection is intended to reduce bystanders' hesitation to assist, for fear of being sued or prosecuted for unintentional injury or wrongful death. An example of such a law in common-law areas of Canada: a good Samaritan doctrine is a legal principle that prevents a rescuer who has voluntarily helped a victim in distress from being successfully sued for wrongdoing. Its purpose is to keep people from being reluctant to help a stranger in need for fear of legal repercussions should they make some mistake in treatment. By contrast, a duty to rescue law requires people to offer assistance and holds those who fail to do so liable.",
        "do good samaritan laws protect those who help at an accident",
        "true",
    ),
    _boolq(
        "As with other games in The Elder Scrolls series, the game is set on the continent of Tamriel. The events of the game occur a millennium before those of The Elder Scrolls V: Skyrim and around 800 years before The Elder Scrolls III: Morrowind and The Elder Scrolls IV: Oblivion. It has a broadly similar structure to Skyrim, with two separate conflicts progressing at the same time, one with the fate of the world in the balance, and one where the prize is supreme power on Tamriel. In The Elder Scrolls Online, the first struggle is against the Daedric Prince Molag Bal, who is attempting to meld the plane of Mundus with his realm of Coldharbour, and the second is to capture the vacant imperial throne, contested by three alliances of the mortal races. The player character has been sacrificed to Molag Bal, and Molag Bal has stolen their soul, the recovery of which is the primary game objective.",
        "is elder scrolls online the same as skyrim",
        "false",
    ),
)

CQA_EXEMPLARS = tuple(
    Example(fields={"question": question, "choices": _lettered(choices)}, label=label)
    for question, choices, label in (
        (
            "Sammy wanted to go to where the people were. Where might he go?",
            ("race track", "populated areas", "the desert", "apartment", "roadblock"),
            "B",
        ),
        (
            "To locate a choker not located in a jewelry box or boutique where would you go?",
            ("jewelry store", "neck", "jewlery box", "jewelry box", "boutique"),
            "A",
        ),
        (
            "Google Maps and other highway and street GPS services have replaced what?",
            ("united states", "mexico", "countryside", "atlas", "oceans"),
            "D",
        ),
    )
)

_RACE_ARTICLE = (
    'Last week I talked with some of my students about what they wanted to do after they graduated, and what kind of job prospects they thought they had. Given that I teach students who are training to be doctors, I was surprised do find that most thought that they would not be able to get the jobs they wanted without "outside help". "What kind of help is that?" I asked, expecting them to tell me that they would need a or family friend to help them out. "Surgery ," one replied. I was pretty alarmed by that response. It seems that the graduates of today are increasingly willing to go under the knife to get ahead of others when it comes to getting a job . One girl told me that she was considering surgery to increase her height. "They break your legs, put in special extending screws, and slowly expand the gap between the two ends of the bone as it re-grows, you can get at least 5 cm taller!" At that point, I was shocked. I am short, I can\'t deny that, but I don\'t think I would put myself through months of agony just to be a few centimetres taller. I don\'t even bother to wear shoes with thick soles, as I\'m not trying to hide the fact that I am just not tall! It seems to me that there is a trend towards wanting "perfection" , and that is an ideal that just does not exist in reality. No one is born perfect, yet magazines, TV shows and movies present images of thin, tall, beautiful people as being the norm. Advertisements for slimming aids, beauty treatments and cosmetic surgery clinics fill the pages of newspapers, further creating an idea that "perfection" is a requirement, and that it must be purchased, no matter what the cost. In my opinion, skills, rather than appearance, should determine how successful a person is in his/her chosen career.'
)
RACE_EXEMPLARS = tuple(
    Example(fields={"article": _RACE_ARTICLE, "question": question, "options": _lettered(options)}, label=label)
    for question, options, label in (
        ("We can know from the passage that the author works as a_.", ("doctor", "model", "teacher", "reporter"), "C"),
        (
            "Many graduates today turn to cosmetic surgery to_.",
            ("marry a better man/woman", "become a model", "get an advantage over others in job-hunting", "attract more admirers"),
            "C",
        ),
        (
            "According to the passage, the author believes that_.",
            (
                "everyone should purchase perfection, whatever the cost",
                "it's right for graduates to ask for others to help them out in hunting for jobs",
                "it is one's appearance instead of skills that really matters in one's career",
                "media are to blame for misleading young people in their seeking for surgery",
            ),
            "D",
        ),
    )
)

WINOGRANDE_EXEMPLARS = tuple(
    Example(fields={"sentence": sentence, "option1": one, "option2": two}, label=label)
    for sentence, one, two, label in (
        ("We can know from the passage that the author works as a_.", "garage", "backyard", "1"),
        ("The doctor diagnosed Justin with bipolar and Robert with anxiety. _ had terrible nerves recently.", "Justin", "Robert", "2"),
        ("Dennis drew up a business proposal to present to Logan because _ wants his investment.", "Dennis", "Logan", "1"),
    )
)

BOOLQ = _BoolQTask(
    name="boolq",
    source="boolq",
    files=("validation.jsonl", "val*.json*", "dev*.json*"),
    exemplars=BOOLQ_EXEMPLARS,
    description="BoolQ validation, 3-shot, true/false exact match",
)
COMMONSENSE_QA = _CommonsenseQATask(
    name="commonsense_qa",
    source="commonsense_qa",
    files=("cqa_validation.jsonl", "validation*.json*", "*test*.json*"),
    exemplars=CQA_EXEMPLARS,
    description="CommonsenseQA validation, 3-shot, answer letter exact match",
)
RACE = _RACETask(
    name="race",
    source="race",
    files=("test*.json*", "race_subset1000.jsonl", "*.jsonl"),
    exemplars=RACE_EXEMPLARS,
    description="RACE (test split, or the shared 1,000-question subset), 3-shot, answer letter exact match",
)
WINOGRANDE = _WinoGrandeTask(
    name="winogrande",
    source="winogrande",
    files=("validation.jsonl", "dev*.json*", "val*.json*"),
    exemplars=WINOGRANDE_EXEMPLARS,
    description="WinoGrande (xl) dev, 3-shot, option number exact match",
)
