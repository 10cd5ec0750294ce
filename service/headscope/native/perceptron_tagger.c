/* NLTK's averaged perceptron tagger, scoring in C: the same tags, word for word.
 *
 * For each word NLTK builds 14 feature names (perceptron.py, _get_features), adds up the weight
 * rows the model has for them in that order, starting from 0.0, and takes the label with the
 * largest score (the largest label among equal scores). Here the names are hashed piece by piece
 * as NLTK would spell them, found in a table of the model's names, and their rows of a
 * [feature, label] double matrix added in the same order: the same floats, the same tags.
 * Built without fast-math flags: every addition is an IEEE double addition, in order.
 *
 * Words come as UTF-8, joined by '\n' (a Treebank word never holds whitespace). Python's
 * word[-3:] and word[:1] count code points: here, UTF-8 lead bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *text;
    int64_t length;
} piece_t;

typedef struct {
    uint64_t *hashes; /* per slot; 0: empty */
    int32_t *rows;
    int64_t *key_start;
    int32_t *key_length;
    char *keys;
    uint64_t mask;
    const double *weights; /* [feature, label], owned by the caller */
    int32_t labels;
    piece_t *tags; /* tag strings: labels first, then other tags, START, START2 */
    char *tag_text;
    int32_t tag_count;
    piece_t start[2], end[2];
    char *padding_text;
} tagger_t;

static uint64_t fnv_pieces(const piece_t *pieces, int count) {
    uint64_t hash = 1469598103934665603ULL;
    for (int p = 0; p < count; p++)
        for (int64_t i = 0; i < pieces[p].length; i++) {
            hash ^= (unsigned char)pieces[p].text[i];
            hash *= 1099511628211ULL;
        }
    return hash | 1; /* never 0, the empty mark */
}

static int32_t find_row(const tagger_t *t, const piece_t *pieces, int count) {
    int64_t length = 0;
    for (int p = 0; p < count; p++) length += pieces[p].length;
    uint64_t hash = fnv_pieces(pieces, count);
    for (uint64_t slot = hash & t->mask;; slot = (slot + 1) & t->mask) {
        if (t->hashes[slot] == 0) return -1;
        if (t->hashes[slot] != hash || t->key_length[slot] != length) continue;
        const char *key = t->keys + t->key_start[slot];
        int same = 1;
        for (int p = 0; p < count && same; p++) {
            same = memcmp(key, pieces[p].text, (size_t)pieces[p].length) == 0;
            key += pieces[p].length;
        }
        if (same) return t->rows[slot];
    }
}

static int split_lines(const char *text, int64_t length, piece_t *out, int64_t expected) {
    int64_t count = 0, start = 0;
    if (expected == 0) return length == 0 ? 0 : -1;
    for (int64_t i = 0; i <= length; i++) {
        if (i == length || text[i] == '\n') {
            if (count == expected) return -1;
            out[count].text = text + start;
            out[count].length = i - start;
            count++;
            start = i + 1;
        }
    }
    return count == expected ? 0 : -1;
}

static piece_t last_code_points(piece_t word, int wanted) {
    int64_t i = word.length;
    while (i > 0 && wanted > 0) {
        i--;
        if (((unsigned char)word.text[i] & 0xC0) != 0x80) wanted--;
    }
    piece_t out = {word.text + i, word.length - i};
    return out;
}

static piece_t first_code_point(piece_t word) {
    int64_t i = word.length > 0 ? 1 : 0;
    while (i < word.length && ((unsigned char)word.text[i] & 0xC0) == 0x80) i++;
    piece_t out = {word.text, i};
    return out;
}

static piece_t literal(const char *text) {
    piece_t out = {text, (int64_t)strlen(text)};
    return out;
}

void headscope_tagger_free(tagger_t *t) {
    if (!t) return;
    free(t->hashes);
    free(t->rows);
    free(t->key_start);
    free(t->key_length);
    free(t->keys);
    free(t->tags);
    free(t->tag_text);
    free(t->padding_text);
    free(t);
}

static int copy_lines(const char *text, int64_t length, int64_t count, char **copy, piece_t *out) {
    *copy = malloc((size_t)length + 1);
    if (!*copy) return -1;
    memcpy(*copy, text, (size_t)length);
    return split_lines(*copy, length, out, count);
}

/* keys: the model's feature names joined by '\n', with their rows; tags: the tag strings joined
 * by '\n' (labels first, in score order); padding: START, START2, END, END2 joined by '\n'. */
tagger_t *headscope_tagger_new(const char *keys, int64_t keys_length, const int32_t *rows,
                               int64_t count, const double *weights, int32_t labels,
                               const char *tags, int64_t tags_length, int32_t tag_count,
                               const char *padding, int64_t padding_length) {
    tagger_t *t = calloc(1, sizeof(tagger_t));
    if (!t) return NULL;
    uint64_t capacity = 1024;
    while (capacity < (uint64_t)count * 3) capacity <<= 1;
    t->mask = capacity - 1;
    t->hashes = calloc(capacity, sizeof(uint64_t));
    t->rows = calloc(capacity, sizeof(int32_t));
    t->key_start = calloc(capacity, sizeof(int64_t));
    t->key_length = calloc(capacity, sizeof(int32_t));
    t->tags = calloc((size_t)tag_count + 1, sizeof(piece_t));
    piece_t *names = calloc((size_t)count + 1, sizeof(piece_t));
    piece_t padding_pieces[4];
    if (!t->hashes || !t->rows || !t->key_start || !t->key_length || !t->tags || !names ||
        copy_lines(keys, keys_length, count, &t->keys, names) ||
        copy_lines(tags, tags_length, tag_count, &t->tag_text, t->tags) ||
        copy_lines(padding, padding_length, 4, &t->padding_text, padding_pieces)) {
        free(names);
        headscope_tagger_free(t);
        return NULL;
    }
    for (int64_t k = 0; k < count; k++) {
        uint64_t hash = fnv_pieces(&names[k], 1);
        uint64_t slot = hash & t->mask;
        while (t->hashes[slot] != 0) slot = (slot + 1) & t->mask;
        t->hashes[slot] = hash;
        t->rows[slot] = rows[k];
        t->key_start[slot] = names[k].text - t->keys;
        t->key_length[slot] = (int32_t)names[k].length;
    }
    free(names);
    t->weights = weights;
    t->labels = labels;
    t->tag_count = tag_count;
    t->start[0] = padding_pieces[0];
    t->start[1] = padding_pieces[1];
    t->end[0] = padding_pieces[2];
    t->end[1] = padding_pieces[3];
    return t;
}

/* Tag `sentence_count` sentences of the given lengths. raw: the words as written; normalized:
 * NLTK's normalize() of each; fixed: per word, the index of its tag-dictionary tag or -1 to
 * score it. out: per word, its tag's index. Returns 0, or -1 on malformed input. */
int headscope_tagger_tag(const tagger_t *t, const char *raw, int64_t raw_length,
                         const char *normalized, int64_t normalized_length,
                         const int32_t *sentence_lengths, int32_t sentence_count,
                         const int32_t *fixed, int32_t *out) {
    int64_t words = 0;
    for (int32_t s = 0; s < sentence_count; s++) words += sentence_lengths[s];
    piece_t *raw_words = malloc(sizeof(piece_t) * (size_t)(words + 1));
    piece_t *norm_words = malloc(sizeof(piece_t) * (size_t)(words + 1));
    double *scores = malloc(sizeof(double) * (size_t)(t->labels > 0 ? t->labels : 1));
    int status = -1;
    if (!raw_words || !norm_words || !scores ||
        split_lines(raw, raw_length, raw_words, words) ||
        split_lines(normalized, normalized_length, norm_words, words))
        goto done;
    const piece_t space = literal(" ");
    int64_t first = 0;
    for (int32_t s = 0; s < sentence_count; s++) {
        int64_t n = sentence_lengths[s];
        piece_t prev = t->start[0], prev2 = t->start[1];
        for (int64_t i = 0; i < n; i++) {
            int64_t w = first + i;
            int32_t tag = fixed[w];
            if (tag < 0) {
#define CONTEXT(j) ((j) < 0 ? t->start[(j) + 2] : (j) >= n ? t->end[(j) - n] : norm_words[first + (j)])
                piece_t word = raw_words[w];
                piece_t here = CONTEXT(i), before = CONTEXT(i - 1), before2 = CONTEXT(i - 2);
                piece_t after = CONTEXT(i + 1), after2 = CONTEXT(i + 2);
#undef CONTEXT
                piece_t f0[] = {literal("bias")};
                piece_t f1[] = {literal("i suffix "), last_code_points(word, 3)};
                piece_t f2[] = {literal("i pref1 "), first_code_point(word)};
                piece_t f3[] = {literal("i-1 tag "), prev};
                piece_t f4[] = {literal("i-2 tag "), prev2};
                piece_t f5[] = {literal("i tag+i-2 tag "), prev, space, prev2};
                piece_t f6[] = {literal("i word "), here};
                piece_t f7[] = {literal("i-1 tag+i word "), prev, space, here};
                piece_t f8[] = {literal("i-1 word "), before};
                piece_t f9[] = {literal("i-1 suffix "), last_code_points(before, 3)};
                piece_t f10[] = {literal("i-2 word "), before2};
                piece_t f11[] = {literal("i+1 word "), after};
                piece_t f12[] = {literal("i+1 suffix "), last_code_points(after, 3)};
                piece_t f13[] = {literal("i+2 word "), after2};
                const piece_t *features[14] = {f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13};
                const int sizes[14] = {1, 2, 2, 2, 2, 4, 2, 4, 2, 2, 2, 2, 2, 2};
                for (int32_t l = 0; l < t->labels; l++) scores[l] = 0.0;
                for (int f = 0; f < 14; f++) {
                    int32_t row = find_row(t, features[f], sizes[f]);
                    if (row < 0) continue;
                    const double *weights = t->weights + (int64_t)row * t->labels;
                    for (int32_t l = 0; l < t->labels; l++) scores[l] += weights[l];
                }
                tag = 0;
                for (int32_t l = 1; l < t->labels; l++)
                    if (scores[l] > scores[tag]) tag = l;
            } else if (tag >= t->tag_count) {
                goto done;
            }
            out[w] = tag;
            prev2 = prev;
            prev = t->tags[tag];
        }
        first += n;
    }
    status = 0;
done:
    free(raw_words);
    free(norm_words);
    free(scores);
    return status;
}
