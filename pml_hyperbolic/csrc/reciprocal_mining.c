/* Triplets from mutual nearest neighbours (HIER's mining) on a float32 similarity matrix, CPU.

   Compiled at first use by pml_hyperbolic/utils/native.py and called through ctypes; the torch implementation it
   replaces (and is tested against) is ReciprocalTripletMiner.mine_similarity. For an n x n similarity S (larger =
   closer, row-major) and optional labels:

   - row i ranks j by (priority, S_ij) descending, ties to the lower j; priority 2 for j = i, 1 for a same-label j,
     0 otherwise. knn(i) = the first topk.
   - pos(i) = {j != i : j in knn(i) and i in knn(j)}; neg(i) = the other j (i itself only if !exclude_self).
   - anchors: the i (ascending) with |pos(i)| >= 2 and |neg(i)| >= 1. Triplet s of anchor i takes the positive number
     min(floor(u[i][0][s] |pos(i)|), |pos(i)| - 1) of pos(i) in index order (float32 product), the negative likewise
     with u[i][1][s]; u is n x 2 x tpa uniforms in [0, 1).

   Cost: n^2 topk comparisons at most (one insertion pass per row) plus n tpa samples. */

#include <stdint.h>
#include <stdlib.h>

/* The ranking priority of j in row i: 2 for the point itself, 1 for a same-label point, 0 otherwise. */
static inline int priority(int64_t i, int64_t j, const int64_t *labels) {
    return j == i ? 2 : (labels && labels[i] == labels[j]);
}

/* knn (n x n, zeroed) gets 1 at the topk best j of each row. best: scratch of topk indices. */
static void nearest(const float *sim, int64_t n, const int64_t *labels, int64_t topk, unsigned char *knn,
                    int64_t *best) {
    for (int64_t i = 0; i < n; i++) {
        const float *row = sim + i * n;
        int64_t count = 0;
        int last_priority = 0; /* rank of best[count - 1] */
        float last_sim = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            const int pj = priority(i, j, labels);
            /* most candidates rank below a full list's last entry: one comparison */
            if (count == topk && (pj < last_priority || (pj == last_priority && row[j] <= last_sim))) continue;
            /* position after every kept entry that ranks at least as high (equal ranks keep index order) */
            int64_t at = count;
            while (at > 0) {
                const int64_t b = best[at - 1];
                const int pb = priority(i, b, labels);
                if (pb > pj || (pb == pj && row[b] >= row[j])) break;
                at--;
            }
            if (count < topk) count++;
            for (int64_t m = count - 1; m > at; m--) best[m] = best[m - 1];
            best[at] = j;
            const int64_t b = best[count - 1];
            last_priority = priority(i, b, labels);
            last_sim = row[b];
        }
        for (int64_t m = 0; m < count; m++) knn[i * n + best[m]] = 1;
    }
}

/* Returns the number of anchors (each gets tpa triplets in anchors/positives/negatives, which hold n tpa entries),
   or -1 if out of memory. */
int64_t reciprocal_triplets(const float *sim, int64_t n, const int64_t *labels, int64_t topk, int64_t tpa,
                            int exclude_self, const float *u, int64_t *anchors, int64_t *positives,
                            int64_t *negatives) {
    unsigned char *knn = calloc((size_t)(n * n > 0 ? n * n : 1), 1);
    int64_t *scratch = malloc(sizeof(int64_t) * (size_t)(2 * n + topk + 1));
    if (!knn || !scratch) {
        free(knn);
        free(scratch);
        return -1;
    }
    int64_t *pos = scratch, *neg = scratch + n, *best = scratch + 2 * n;
    nearest(sim, n, labels, topk, knn, best);
    int64_t found = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t n_pos = 0, n_neg = 0;
        for (int64_t j = 0; j < n; j++) {
            if (j != i && knn[i * n + j] && knn[j * n + i])
                pos[n_pos++] = j;
            else if (j != i || !exclude_self)
                neg[n_neg++] = j;
        }
        if (n_pos < 2 || n_neg < 1) continue;
        const float *ui = u + i * 2 * tpa;
        for (int64_t s = 0; s < tpa; s++) {
            int64_t p = (int64_t)(ui[s] * (float)n_pos), q = (int64_t)(ui[tpa + s] * (float)n_neg);
            const int64_t t = found * tpa + s;
            anchors[t] = i;
            positives[t] = pos[p < n_pos ? p : n_pos - 1];
            negatives[t] = neg[q < n_neg ? q : n_neg - 1];
        }
        found++;
    }
    free(knn);
    free(scratch);
    return found;
}
