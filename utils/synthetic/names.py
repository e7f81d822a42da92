"""Vocabulary of the synthetic generator: made-up artist and track names, MBIDs, countries.

Names are assembled from small hand-written word lists with vectorized string operations, one
pattern at a time (never one name at a time). About one artist in six uses a non-Latin or
accented script, some names carry quote characters, and none contain tab, CR or LF.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STR = np.dtypes.StringDType()


def _vocabulary(text: str, sep: str | None = None) -> tuple[str, ...]:
    """The entries of a vocabulary written as one string (whitespace- or sep-separated)."""
    return tuple(text.split(sep))


ADJECTIVES = _vocabulary(
    "Red Blue Black White Golden Silver Broken Electric Silent Wild Lonely Burning Frozen Hollow "
    "Velvet Crystal Northern Southern Eastern Western Hidden Lost Secret Sweet Bitter Dark Bright "
    "Distant Endless Faded Fallen Gentle Heavy Holy Human Lazy Little Lucky Mad Midnight Modern "
    "Neon New Old Pale Paper Plastic Pretty Quiet Rapid Restless Rusty Sacred Savage Shallow Shiny "
    "Sleepy Slow Solar Sonic Static Stolen Strange Sunny Tender Thin Tiny True Twisted Urban "
    "Violet Wandering Warm Wicked Young Amber Arctic Atomic Autumn Cosmic Crimson Digital Dusty "
    "Emerald Fragile Hungry Invisible Liquid Magnetic Mechanical Mellow Open Orange Perfect "
    "Radiant Royal Scarlet Secondhand Seven Shattered Simple Soft Spinning Starry Stone Summer "
    "Tropical Velour Winter Wooden"
)

NOUNS = _vocabulary(
    "Heart Night River Ocean Dream Fire Rain Shadow Light Road Star Moon Sun Sky City Garden "
    "Mirror Window Door Machine Engine Radio Signal Echo Storm Thunder Wave Island Mountain "
    "Valley Forest Desert Harbor Bridge Tower Castle Kingdom Empire Satellite Rocket Planet "
    "Comet Galaxy Horizon Summer Winter Autumn Spring Morning Evening Sunday Monday Friday "
    "Highway Station Train Circus Carnival Parade Ballroom Disco Jungle Paradise Heaven Angel "
    "Devil Ghost Spirit Soul Mind Body Blood Bone Skin Eye Hand Voice Song Melody Rhythm Beat "
    "Drum Guitar Piano Violin Trumpet Choir Letter Postcard Photograph Memory Secret Promise "
    "Lie Truth Reason Question Answer Wolf Tiger Lion Fox Bird Raven Crow Swan Horse Whale "
    "Snake Butterfly Bee Flower Rose Lily Orchid Tree Leaf Seed Root Stone Diamond Pearl Gold "
    "Silver Steel Iron Glass Smoke Dust Ash Salt Sugar Honey Wine Whiskey Coffee Cigarette "
    "Telephone Television Camera Cinema Theater Museum Library Hotel Motel Kitchen Bedroom "
    "Basement Rooftop Balcony Harbour Lighthouse Anchor Compass Map Atlas Clock Calendar"
)

PLURALS = _vocabulary(
    "Hearts Rivers Dreams Shadows Lights Stars Moons Cities Gardens Mirrors Windows Machines "
    "Engines Radios Signals Echoes Storms Waves Islands Mountains Valleys Forests Towers Castles "
    "Kingdoms Rockets Planets Comets Highways Stations Trains Angels Devils Ghosts Spirits Souls "
    "Bones Eyes Hands Voices Songs Drums Guitars Letters Memories Secrets Promises Lies Wolves "
    "Tigers Lions Foxes Birds Ravens Crows Swans Horses Whales Snakes Butterflies Bees Flowers "
    "Roses Lilies Trees Leaves Seeds Roots Stones Diamonds Pearls Cigarettes Cameras Hotels "
    "Anchors Clocks Sailors Pilots Strangers Lovers Dancers Drifters Runners Thieves Kings "
    "Queens Knights Monks Saints Sinners Robots Pirates Cowboys Astronauts Vampires Zombies"
)

VERBS = _vocabulary(
    "Run Fall Dance Sing Burn Breathe Wait Stay Go Leave Hold Fly Drive Dream Shine Cry Smile "
    "Forget Remember Believe Wonder Whisper Shout Crawl Swim Float Sink Rise Return Escape "
    "Follow Chase Touch Kiss Break Shake Move Turn Stop Start Walk Talk Listen Look Call Hide"
)

FIRST_NAMES = _vocabulary(
    "John Paul George Mary Anna Peter Tom Lisa Mark Susan David Laura Mike Kate James Emma Nick "
    "Sarah Chris Julia Alex Nina Sam Ella Ben Ruby Max Lucy Jack Iris Leo Ada Oscar Nora Felix "
    "Vera Hugo Lena Ivan Olga Marco Sofia Pablo Lucia Hans Greta Lars Ingrid Kenji Yuki Omar "
    "Leila Carlos Elena Tony Dolly Johnny Billie Ray Etta Otis Nat Dizzy Sonny Muddy Buddy"
)

LAST_NAMES = _vocabulary(
    "Smith Brown Wilson Taylor Clark Lewis Walker Hall Young King Wright Hill Green Baker Adams "
    "Nelson Carter Mitchell Turner Parker Collins Edwards Stewart Morris Murphy Cook Rogers "
    "Morgan Cooper Reed Bailey Bell Howard Ward Cox Richardson Wood Watson Brooks Bennett Gray "
    "James Hughes Price Sanders Myers Long Ross Foster Powell Jenkins Perry Russell Sullivan "
    "Fischer Weber Novak Kowalski Larsen Berg Rossi Costa Silva Moreau Dubois Tanaka Sato"
)

NICKNAMES = _vocabulary("Big Kid Lucky Slim Doc Sugar Smokey Rocket Honey Papa Mama Tiny Duke Ace")

ACTS = _vocabulary("Band Orchestra Quartet Trio Ensemble Collective Project Sound System Crew Club")

VERSIONS = _vocabulary(
    "Live|Remix|Acoustic|Demo|Radio Edit|Remastered|Instrumental|Extended Mix|Live at the Roxy|"
    "Album Version|Single Version|Club Mix|Reprise|Unplugged|Original Mix|Dub",
    "|",
)

SYLLABLES = _vocabulary(
    "ka ri mo na te lu si ra vo de zo mi ta ne ko lo ba fi gu ha je po qu sa ve xe yo ze "
    "bra tri clo dra fle gri kro pla sto tra ar el in on ul an en or ix ax mar ben dor lin "
    "ton vel zar kin sol fen gar mon tal ber nik ros val dan kel mir cu dy wa hu oa ei "
    "sha cha tho phi ster mun rav lex bo ly"
)

# Accented Latin words: every one carries at least one non-ASCII letter.
ACCENTED = _vocabulary(
    "Café Mañana Corazón Canción Señor Niño Árbol Música Otoño Sueño Ilusión Pasión Estación "
    "Año Élan Rêve Été Fête Forêt Château Déjà Même Âme Cœur Noël Garçon Français "
    "Straße Größe Müller Schön Mädchen Bär Über Fräulein Glück Träume Wölfe Köln Öl "
    "Ångström Fjäll Höst Sjö Kärlek Älv Skål Blåbær Æble Søndag Ørn Hämärä Yö Pääsky Sää "
    "Łódź Świat Miłość Żółty Gość Śnieg Źródło Księżyc Coração Canção Irmão "
    "Ação Pão Mãe São Lição Ölüm Güneş Çiçek Şarkı Ağaç Dönüş Gölge Kış Rüzgâr Işık Ánima "
    "Lágrima Mediterráneo Océano Núcleo Déesse Rosée Brûlé Naïve Zoë Rhône Crème Citroën"
)

CYRILLIC = _vocabulary(
    "Кино Звезда Ночь Город Песня Река Небо Солнце Луна Ветер Дождь Снег Зима Весна Лето Осень "
    "Любовь Мечта Дорога Поезд Море Огонь Тень Свет Время Жизнь Сердце Душа Память Сон Утро "
    "Вечер Окно Дом Лес Поле Птица Волк Кот Ангел Король Королева Гроза Туман Берег Остров "
    "Аквариум Сплин Мумий Тролль Алиса Ария Чайф Ночные Снайперы Бумбокс Океан Эльзы Ляпис"
)

JAPANESE = _vocabulary(
    "夜 空 海 星 月 花 雨 風 光 夢 恋 心 桜 雪 道 街 東京 大阪 京都 未来 世界 青春 少女 "
    "宇宙 記憶 約束 秘密 天使 悪魔 さくら ひかり そら うみ ゆめ こころ ほし あめ かぜ "
    "トーキョー ロック ポップ ダンス ミュージック ナイト スター ドリーム ラブ ハート "
    "ゲーム シティ ガール ボーイ ブルー レッド ゴールド シルバー エンジェル 電気 渋谷 "
    "椎名 坂本 松任谷 細野 高橋 山下 竹内 宇多田 浜崎 中島"
)

KOREAN = _vocabulary("사랑 하늘 바다 별 달 꽃 비 바람 빛 꿈 마음 서울 부산 노래 소녀 소년 "
                     "너 나 우리 밤")

GREEK = _vocabulary("Αγάπη Θάλασσα Νύχτα Ουρανός Ήλιος Φεγγάρι Καρδιά Όνειρο Φως Δρόμος "
                    "Αέρας Βροχή")

CHINESE = _vocabulary("爱 天空 大海 星星 月亮 花 雨 风 光 梦 心 北京 上海 台北 香港 青春 世界 "
                      "未来 时间 故事")

GENRES = _vocabulary(
    "rock|indie|alternative|electronic|pop|jazz|hip-hop|metal|punk|folk|soul|funk|blues|"
    "classical|ambient|techno|house|trance|drum and bass|dubstep|reggae|country|singer-songwriter|"
    "post-rock|shoegaze|experimental|psychedelic|new wave|synthpop|trip-hop|downtempo|idm|"
    "hardcore|emo|britpop|j-pop|k-pop|latin|world|soundtrack|chillout|lounge|noise|grunge|"
    "progressive rock|hard rock|death metal|black metal|r&b|disco|ska|garage rock|80s|90s",
    "|",
)

# (country, weight, typical UTC offset in hours): the profile file's country spellings,
# including the comma-bearing official names; weights follow the real file's shares roughly.
COUNTRIES: tuple[tuple[str, float, int], ...] = (
    ("United States", 228, -6), ("United Kingdom", 126, 0), ("Poland", 50, 1),
    ("Germany", 36, 1), ("Norway", 35, 1), ("Finland", 32, 2), ("Canada", 32, -5),
    ("Turkey", 28, 2), ("Italy", 27, 1), ("Sweden", 24, 1), ("Netherlands", 23, 1),
    ("Russian Federation", 22, 3), ("Australia", 22, 10), ("Brazil", 20, -3), ("Spain", 17, 1),
    ("France", 14, 1), ("Mexico", 12, -6), ("Belgium", 9, 1), ("Argentina", 9, -3),
    ("Romania", 8, 2), ("Portugal", 8, 0), ("Chile", 8, -4), ("Croatia", 7, 1),
    ("Bulgaria", 7, 2), ("Venezuela", 6, -4), ("New Zealand", 6, 12), ("Switzerland", 5, 1),
    ("Peru", 5, -5), ("Japan", 5, 9), ("Czech Republic", 5, 1), ("Trinidad and Tobago", 4, -4),
    ("Slovakia", 4, 1), ("Serbia", 4, 1), ("Lithuania", 4, 2), ("Ireland", 4, 0),
    ("Hungary", 4, 1), ("Estonia", 4, 2), ("Thailand", 3, 7), ("Latvia", 3, 2),
    ("Israel", 3, 2), ("Greece", 3, 2), ("Denmark", 3, 1), ("Austria", 3, 1), ("India", 3, 5),
    ("Colombia", 2, -5), ("Ukraine", 2, 2), ("Slovenia", 2, 1), ("Iceland", 2, 0),
    ("Philippines", 2, 8), ("Singapore", 2, 8), ("Malaysia", 2, 8), ("China", 2, 8),
    ("Korea, Republic of", 2, 9), ("Iran, Islamic Republic of", 1, 3),
    ("Korea, Democratic People's Republic of", 1, 9),
    ("Congo, the Democratic Republic of the", 1, 1), ("Moldova, Republic of", 1, 2),
    ("Macedonia, the Former Yugoslav Republic of", 1, 1), ("Taiwan, Province of China", 1, 8),
    ("Tanzania, United Republic of", 1, 3), ("South Africa", 1, 2), ("Egypt", 1, 2),
    ("Morocco", 1, 0), ("Uruguay", 1, -3), ("Costa Rica", 1, -6), ("Belarus", 1, 2),
    ("Luxembourg", 1, 1), ("Malta", 1, 1), ("Cyprus", 1, 2), ("Georgia", 1, 4),
)


def _words(words: list[str] | tuple[str, ...]) -> np.ndarray:
    """A word list as a numpy string array."""
    return np.asarray(words, dtype=STR)


def _pick(rng: np.random.Generator, words: list[str] | tuple[str, ...], n: int) -> np.ndarray:
    """n random entries of a word list, as a numpy string array."""
    arr = _words(words)
    return arr[rng.integers(0, len(arr), n)]


def _join(*parts: np.ndarray | str) -> np.ndarray:
    """Element-wise concatenation of string arrays and literals."""
    out = parts[0]
    for part in parts[1:]:
        out = np.strings.add(out, part)
    return np.asarray(out, dtype=STR)


def _pseudo_word(rng: np.random.Generator, n: int, syllables: int) -> np.ndarray:
    """Made-up capitalized words of `syllables` syllables (a space of millions of spellings)."""
    word = _pick(rng, SYLLABLES, n)
    for _ in range(syllables - 1):
        word = _join(word, _pick(rng, SYLLABLES, n))
    return np.strings.capitalize(word)


SCRIPT_WORDS = {"accented": ACCENTED, "cyrillic": CYRILLIC, "japanese": JAPANESE,
                "korean": KOREAN, "greek": GREEK, "chinese": CHINESE}
SCRIPT_SEPARATOR = {"japanese": "", "chinese": ""}

# Syllables of each non-Latin script, for made-up words in that script.
SCRIPT_SYLLABLES = {
    "cyrillic": tuple(c + v for c in "бвгдзклмнпрстфхчшж" for v in "аеиоуя"),
    "japanese": tuple("カキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモラリルレロ"
                      "かきくけこさしすせそたちつてとなにぬねのまみむめもらりるれろ"),
    "korean": tuple(chr(0xAC00 + (i * 21 + m) * 28) for i in range(19) for m in range(0, 21, 2)),
    "greek": tuple(c + v for c in "βγδζθκλμνξπρστφχ" for v in "αεηιουω"),
    "chinese": tuple(chr(0x4E00 + k) for k in range(0, 20000, 37)),
    "accented": SYLLABLES,
}


def _script_words(rng: np.random.Generator, script: str, n: int, count: int) -> np.ndarray:
    """`count` words of a non-ASCII script joined by the script's separator."""
    sep = SCRIPT_SEPARATOR.get(script, " ")
    out = _pick(rng, SCRIPT_WORDS[script], n)
    for _ in range(count - 1):
        out = _join(out, sep, _pick(rng, SCRIPT_WORDS[script], n))
    return out


def _script_pseudo_word(rng: np.random.Generator, script: str, n: int, syllables: int
                        ) -> np.ndarray:
    """Made-up words from a script's syllables (capitalized when the script has case)."""
    word = _pick(rng, SCRIPT_SYLLABLES[script], n)
    for _ in range(syllables - 1):
        word = _join(word, _pick(rng, SCRIPT_SYLLABLES[script], n))
    return np.strings.capitalize(word)


def _by_pattern(rng: np.random.Generator, n: int, weights: list[float], builders: list
                ) -> np.ndarray:
    """Fill n names, choosing a builder per name by weight; each builder runs once, vectorized."""
    choice = rng.choice(len(builders), size=n, p=np.asarray(weights) / np.sum(weights))
    out = np.empty(n, dtype=STR)
    for k, build in enumerate(builders):
        idx = np.flatnonzero(choice == k)
        if len(idx):
            out[idx] = build(len(idx))
    return out


def artist_names(rng: np.random.Generator, scripts: np.ndarray) -> np.ndarray:
    """One name per artist in its script ('ascii' or a non-ASCII script name)."""
    out = np.empty(len(scripts), dtype=STR)
    ascii_idx = np.flatnonzero(scripts == "ascii")
    out[ascii_idx] = _ascii_artists(rng, len(ascii_idx))
    for script in np.unique(scripts[scripts != "ascii"]):
        idx = np.flatnonzero(scripts == script)
        out[idx] = _foreign_artists(rng, str(script), len(idx))
    return out


def _ascii_artists(rng: np.random.Generator, n: int) -> np.ndarray:
    """English-looking artist names: bands, people, made-up words, DJs, a few with quotes."""

    def the_band(k: int) -> np.ndarray:
        return _join("The ", _pick(rng, ADJECTIVES, k), " ", _pick(rng, PLURALS, k))

    def person(k: int) -> np.ndarray:
        return _join(_pick(rng, FIRST_NAMES, k), " ", _pseudo_word(rng, k, 2),
                     _pick(rng, ["son", "sen", "ez", "ski", "ova", "ini", "er", "ley"], k))

    def pseudo(k: int) -> np.ndarray:
        longer = rng.random(k) < 0.5
        return np.where(longer, _pseudo_word(rng, k, 4), _pseudo_word(rng, k, 3))

    def pseudo_act(k: int) -> np.ndarray:
        return _join(_pseudo_word(rng, k, 3), " ", _pick(rng, ACTS, k))

    def dj(k: int) -> np.ndarray:
        return _join(_pick(rng, ["DJ ", "MC ", "Lil ", "Dr. "], k), _pseudo_word(rng, k, 3))

    def nickname(k: int) -> np.ndarray:  # quote characters as in Johnny "Hammond" Smith
        return _join(_pick(rng, FIRST_NAMES, k), ' "', _pick(rng, NICKNAMES, k), '" ',
                     _pick(rng, LAST_NAMES, k), " ", _pseudo_word(rng, k, 1))

    def apostrophe(k: int) -> np.ndarray:
        return _join(_pick(rng, ["O'", "D'", "Mc"], k), _pseudo_word(rng, k, 2), " & The ",
                     _pick(rng, PLURALS, k))

    def adj_noun(k: int) -> np.ndarray:
        return _join(_pick(rng, ADJECTIVES, k), " ", _pick(rng, NOUNS, k), " ",
                     _pseudo_word(rng, k, 2))

    return _by_pattern(
        rng, n, [3, 22, 35, 10, 8, 2, 3, 17],
        [the_band, person, pseudo, pseudo_act, dj, nickname, apostrophe, adj_noun],
    )


def _foreign_artists(rng: np.random.Generator, script: str, n: int) -> np.ndarray:
    """Artist names in a non-ASCII script: a real word of it plus a made-up one."""
    sep = SCRIPT_SEPARATOR.get(script, " ")
    return _join(_script_words(rng, script, n, 1), sep, _script_pseudo_word(rng, script, n, 3))


def track_names(rng: np.random.Generator, scripts: np.ndarray) -> np.ndarray:
    """One title per track in its script; some carry versions, apostrophes or double quotes."""
    out = np.empty(len(scripts), dtype=STR)
    ascii_idx = np.flatnonzero(scripts == "ascii")
    out[ascii_idx] = _ascii_tracks(rng, len(ascii_idx))
    for script in np.unique(scripts[scripts != "ascii"]):
        idx = np.flatnonzero(scripts == script)
        count = 1 + int(script not in ("japanese", "chinese"))
        out[idx] = _script_words(rng, str(script), len(idx), count)
    versioned = rng.random(len(out)) < 0.08
    out[versioned] = _join(out[versioned], " (", _pick(rng, VERSIONS, int(versioned.sum())), ")")
    return out


def _ascii_tracks(rng: np.random.Generator, n: int) -> np.ndarray:
    """English-looking titles, a few with apostrophes, double quotes or accented words."""

    def adj_noun(k: int) -> np.ndarray:
        return _join(_pick(rng, ADJECTIVES, k), " ", _pick(rng, NOUNS, k))

    def noun(k: int) -> np.ndarray:
        return _pick(rng, NOUNS + PLURALS, k)

    def noun_of(k: int) -> np.ndarray:
        return _join("The ", _pick(rng, NOUNS, k), " of ", _pick(rng, PLURALS, k))

    def verb(k: int) -> np.ndarray:
        return _join(_pick(rng, ["Don't ", "I'll ", "We ", "Let's ", "Never ", "Just "], k),
                     _pick(rng, VERBS, k), " ", _pick(rng, ["Away", "Tonight", "Again",
                                                            "With Me", "Forever", "Home"], k))

    def in_the(k: int) -> np.ndarray:
        return _join(_pick(rng, NOUNS, k), " in the ", _pick(rng, NOUNS, k))

    def quoted(k: int) -> np.ndarray:
        return _join('"', _pick(rng, NOUNS, k), '" ', _pick(rng, VERBS, k))

    def pseudo(k: int) -> np.ndarray:
        return _join(_pseudo_word(rng, k, 2), " ", _pick(rng, NOUNS, k))

    def accented(k: int) -> np.ndarray:  # accented words in otherwise English catalogs
        return _join(_pick(rng, ACCENTED, k), " ", _pick(rng, NOUNS, k))

    return _by_pattern(
        rng, n, [24, 12, 8, 8, 10, 2, 32, 4],
        [adj_noun, noun, noun_of, verb, in_the, quoted, pseudo, accented],
    )


def to_arrow(values: np.ndarray) -> pa.Array:
    """A numpy string array as one contiguous Arrow string array."""
    arr = pa.array(values, type=pa.large_string())
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def make_unique(names: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Suffix ' (2)', ' (3)'... to names repeating (case-insensitively, stripped) in a group."""
    key = pc.utf8_lower(pc.utf8_trim_whitespace(to_arrow(names)))
    code = pc.dictionary_encode(key).indices.to_numpy().astype(np.int64)
    if group is not None:
        code = np.asarray(group, dtype=np.int64) * (int(code.max()) + 1) + code
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    run_start = np.flatnonzero(np.r_[True, sorted_code[1:] != sorted_code[:-1]])
    run_of = np.cumsum(np.r_[True, sorted_code[1:] != sorted_code[:-1]]) - 1
    rank = np.empty(len(code), dtype=np.int64)
    rank[order] = np.arange(len(code)) - run_start[run_of]
    dup = rank > 0
    out = names.copy()
    out[dup] = _join(names[dup], " (", (rank[dup] + 1).astype(str).astype(STR), ")")
    return out


def uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random version-4 UUIDs as lowercase strings, built from bytes without a Python loop."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = hexdigits[raw >> 4]
    nibbles[:, 1::2] = hexdigits[raw & 0x0F]
    chars = np.full((n, 36), ord("-"), dtype=np.uint8)
    for start, stop, src in ((0, 8, 0), (9, 13, 8), (14, 18, 12), (19, 23, 16), (24, 36, 20)):
        chars[:, start:stop] = nibbles[:, src:src + stop - start]
    return chars.view("S36").ravel().astype(STR)


def tag_lists(rng: np.random.Generator, popularity_rank: np.ndarray) -> np.ndarray:
    """Distinct genre tags per artist joined with '|': popular artists carry more, some none."""
    genres = _words(GENRES)
    n, size = len(popularity_rank), len(GENRES)
    count = np.clip(rng.poisson(1.0 + 3.0 / (1.0 + popularity_rank / 2000.0)), 0, 5)
    # Stepping through the genre list by a stride coprime with its length never repeats a genre.
    strides = np.array([k for k in range(1, size) if math.gcd(k, size) == 1])
    first = rng.integers(0, size, n)
    stride = strides[rng.integers(0, len(strides), n)]
    out = np.full(n, "", dtype=STR)
    for k in range(5):
        has = count > k
        pick = genres[(first[has] + k * stride[has]) % size]
        out[has] = pick if k == 0 else _join(out[has], "|", pick)
    return out
