/* Triplets from mutual nearest neighbours (HIER's mining) on a float32 similarity matrix, CPU.

   Compiled at first use by pml_hyperbolic/backends/native.py and called through ctypes; the torch implementation it
   replaces (and is tested against) is ReciprocalTripletMiner.mine_similarity. For an n x n similarity S (larger =
   closer, row-major) and optional labels:

   - row i ranks j by (priority, S_ij) descending, ties to the lower j; priority 2 for j = i, 1 for a same-label j,
     0 otherwise. knn(i) = the first topk.
   - pos(i) = {j != i : j in knn(i) and i in knn(j)}; neg(i) = the other j (i itself only if !exclude_self).
   - every point i owns the tpa triplet slots i tpa ... i tpa + tpa - 1 (fixed shapes, no compaction); it is a valid
     anchor if |pos(i)| >= 2 and |neg(i)| >= 1. Slot s of a valid anchor takes the positive number
     min(floor(u[i][0][s] |pos(i)|), |pos(i)| - 1) of pos(i) in index order (float32 product), the negative likewise
     with u[i][1][s]; u is n x 2 x tpa uniforms in [0, 1). The slots of an invalid anchor hold (i, i, i).

   Cost: n^2 topk comparisons at most (one pass per row) plus n tpa samples. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The ranking priority of j in row i: 2 for the point itself, 1 for a same-label point, 0 otherwise. */
static inline int priority(int64_t i, int64_t j, const int64_t *labels) {
    return j == i ? 2 : (labels && labels[i] == labels[j]);
}

#define INDEX_BITS 30

/* A key that orders j like the ranking of row i (larger = ranked higher): the priority, the similarity's bits mapped
   to an unsigned order (-0 as +0), then the complement of j (ties to the lower index); needs j < 2^30. */
static inline uint64_t rank_key(int priority, float s, int64_t j) {
    uint32_t u;
    memcpy(&u, &s, 4);
    if ((u & 0x7FFFFFFFu) == 0) u = 0;
    u ^= (u >> 31) ? 0xFFFFFFFFu : 0x80000000u;
    return ((uint64_t)priority << 62) | ((uint64_t)u << INDEX_BITS) | (uint64_t)(((int64_t)1 << INDEX_BITS) - 1 - j);
}

/* knn (n x n, zeroed) gets 1 at the topk best j of each row: the set is kept unordered, a j that outranks its worst
   member replaces it. keys: scratch of topk rank keys. */
static void nearest(const float *sim, int64_t n, const int64_t *labels, int64_t topk, unsigned char *knn,
                    uint64_t *keys) {
    const uint64_t index_mask = ((uint64_t)1 << INDEX_BITS) - 1;
    for (int64_t i = 0; i < n && topk > 0; i++) {
        const float *row = sim + i * n;
        int64_t count = 0, w = 0;
        for (int64_t j = 0; j < n; j++) {
            const uint64_t key = rank_key(priority(i, j, labels), row[j], j);
            if (count == topk && key < keys[w]) continue; /* the usual case once the set is full */
            keys[count < topk ? count++ : w] = key;
            if (count < topk) continue;
            w = 0;
            for (int64_t m = 1; m < topk; m++) w = keys[m] < keys[w] ? m : w;
        }
        for (int64_t m = 0; m < count; m++) knn[i * n + (int64_t)(index_mask - (keys[m] & index_mask))] = 1;
    }
}

/* Whether all m floats are finite, from their bits (the build's -ffinite-math-only lets isfinite() fold to true). */
static int all_finite(const float *x, int64_t m) {
    uint32_t bad = 0;
    for (int64_t j = 0; j < m; j++) {
        uint32_t bits;
        memcpy(&bits, x + j, 4);
        bad |= (bits & 0x7F800000u) == 0x7F800000u;
    }
    return !bad;
}

/* Writes the n tpa slots of anchors/positives/negatives and valid (n: 1 or 0 per anchor); returns the number of
   valid anchors, -1 if out of memory, or -2 if sim holds NaN or inf. */
int64_t reciprocal_triplets(const float *sim, int64_t n, const int64_t *labels, int64_t topk, int64_t tpa,
                            int exclude_self, const float *u, int64_t *anchors, int64_t *positives,
                            int64_t *negatives, float *valid) {
    if (!all_finite(sim, n * n)) return -2;
    unsigned char *knn = calloc((size_t)(n * n > 0 ? n * n : 1), 1);
    int64_t *scratch = malloc(sizeof(int64_t) * (size_t)(2 * n + topk + 1));
    if (!knn || !scratch) {
        free(knn);
        free(scratch);
        return -1;
    }
    int64_t *pos = scratch, *neg = scratch + n;
    nearest(sim, n, labels, topk, knn, (uint64_t *)(scratch + 2 * n));
    int64_t found = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t n_pos = 0, n_neg = 0;
        for (int64_t j = 0; j < n; j++) {
            if (j != i && knn[i * n + j] && knn[j * n + i])
                pos[n_pos++] = j;
            else if (j != i || !exclude_self)
                neg[n_neg++] = j;
        }
        const int ok = n_pos >= 2 && n_neg >= 1;
        const float *ui = u + i * 2 * tpa;
        for (int64_t s = 0; s < tpa; s++) {
            int64_t p = (int64_t)(ui[s] * (float)n_pos), q = (int64_t)(ui[tpa + s] * (float)n_neg);
            const int64_t t = i * tpa + s;
            anchors[t] = i;
            positives[t] = ok ? pos[p < n_pos ? p : n_pos - 1] : i;
            negatives[t] = ok ? neg[q < n_neg ? q : n_neg - 1] : i;
        }
        valid[i] = (float)ok;
        found += ok;
    }
    free(knn);
    free(scratch);
    return found;
}
