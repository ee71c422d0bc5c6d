/* The CLUB estimator's negative log-likelihood and its gradient, one term, on the CPU.
 *
 * Built and loaded by sea_dist/losses/native.py (see there for why). club_nll_grad computes
 * what CLUBStack.nll_and_grad computes for one term: two 2-layer MLPs of hidden width 8 (the
 * mean and the tanh log-variance) on x, the Gaussian NLL of y, and the analytic gradient of
 * mean_i NLL_i with respect to every weight. club_adam_fit runs fit_estimator's whole inner
 * loop (that gradient, then torch.optim.Adam's update) for all terms in one call. Shapes are
 * compile-time constants (-DDX=... -DDY=...), so every inner loop has a fixed trip count and
 * the accumulators stay in registers.
 *
 * Parameter layout (floats), as CLUBStack packs one estimator:
 *   w1 [DX][16]  both first layers side by side (mu: lanes 0-7, log-variance: 8-15)
 *   b1 [16], w2m [8][DY], w2l [8][DY], b2 [2 * DY] (mu's, then log-variance's)
 * The gradient has the same layout and is overwritten.
 */
#include <math.h>
#include <string.h>

#if DX % 8 != 0 || DY % 16 != 0
#error "DX must be a multiple of 8 and DY a multiple of 16"
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef int i16 __attribute__((vector_size(64)));

#define NUMEL (DX * 16 + 16 + 16 * DY + 2 * DY) /* floats per estimator */
#define NV (DY / 16) /* 16-float vectors per output row */
#define R 32         /* rows per tile: a tile's activations stay in L1 */
#define UNROLL _Pragma("GCC unroll 16")

static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 splat(float s) { return (v16){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
/* v where the ReLU's input c is positive, else 0 */
static inline v16 relu_mask(v16 v, v16 c) { return (v16)((i16)v & (c > 0.f)); }

/* loss[0] = mean_i NLL_i (without the constant), g = its gradient; rows x[rows][DX], y[rows][DY].
 * scale is 1 / (the term's row count), so a term split into row ranges sums to its mean. */
void club_nll_grad(const float *p, const float *x, const float *y, long rows, float scale,
                   float *g, double *loss) {
  const float *w1 = p, *b1 = w1 + DX * 16, *w2m = b1 + 16, *w2l = w2m + 8 * DY, *b2 = w2l + 8 * DY;
  float *gw1 = g, *gb1 = gw1 + DX * 16, *gw2m = gb1 + 16, *gw2l = gw2m + 8 * DY;
  float *gb2 = gw2l + 8 * DY;
  memset(g, 0, sizeof(float) * NUMEL);
  v8 w2t_m[DY], w2t_l[DY]; /* the output layers transposed: w2t_m[d] = w2m[:, d] */
  for (int d = 0; d < DY; d++)
    for (int j = 0; j < 8; j++) { w2t_m[d][j] = w2m[j * DY + d]; w2t_l[d][j] = w2l[j * DY + d]; }
  float xs[R][DX], ys[R][DY], hid[R][16], mu[R][DY], z[R][DY], gm[R][DY], gz[R][DY];
  v16 gb1_acc = splat(0.f), gb2m_acc[NV], gb2l_acc[NV];
  for (int v = 0; v < NV; v++) { gb2m_acc[v] = splat(0.f); gb2l_acc[v] = splat(0.f); }
  double total = 0;
  for (long i0 = 0; i0 < rows; i0 += R) {
    const int n = rows - i0 < R ? (int)(rows - i0) : R;
    memcpy(xs, x + i0 * DX, sizeof(float) * n * DX);
    memcpy(ys, y + i0 * DY, sizeof(float) * n * DY);
    if (n < R) { /* padding rows: zero inputs here, zero gradients below */
      memset(xs[n], 0, sizeof(float) * (R - n) * DX);
      memset(ys[n], 0, sizeof(float) * (R - n) * DY);
    }
    /* hid = relu(x w1 + b1), 8 rows at a time (8 independent FMA chains) */
    for (int r0 = 0; r0 < R; r0 += 8) {
      v16 a[8];
      UNROLL for (int b = 0; b < 8; b++) a[b] = load(b1);
      for (int k = 0; k < DX; k++) {
        const v16 w = load(w1 + k * 16);
        UNROLL for (int b = 0; b < 8; b++) a[b] += splat(xs[r0 + b][k]) * w;
      }
      UNROLL for (int b = 0; b < 8; b++) store(hid[r0 + b], relu_mask(a[b], a[b]));
    }
    /* mu = hid[:, :8] w2m + b2[:DY], z = hid[:, 8:] w2l + b2[DY:], 2 rows at a time */
    for (int r0 = 0; r0 < R; r0 += 2) {
      v16 m[2][NV], l[2][NV];
      UNROLL for (int b = 0; b < 2; b++) UNROLL for (int v = 0; v < NV; v++) {
        m[b][v] = load(b2 + 16 * v);
        l[b][v] = load(b2 + DY + 16 * v);
      }
      for (int j = 0; j < 8; j++)
        UNROLL for (int b = 0; b < 2; b++) UNROLL for (int v = 0; v < NV; v++) {
          m[b][v] += splat(hid[r0 + b][j]) * load(w2m + j * DY + 16 * v);
          l[b][v] += splat(hid[r0 + b][8 + j]) * load(w2l + j * DY + 16 * v);
        }
      UNROLL for (int b = 0; b < 2; b++) UNROLL for (int v = 0; v < NV; v++) {
        store(mu[r0 + b] + 16 * v, m[b][v]);
        store(z[r0 + b] + 16 * v, l[b][v]);
      }
    }
    /* With e = mu - y and s = tanh(z): NLL = e^2 e^-s / 2 + s / 2 per coordinate,
     * d/dmu = e e^-s, d/dz = (1 - e^2 e^-s)(1 - s^2) / 2. The compiler vectorises
     * tanhf and expf through glibc's libmvec. */
    float part = 0.f;
    for (int r = 0; r < n; r++)
      for (int d = 0; d < DY; d++) {
        const float s = tanhf(z[r][d]), inv_var = expf(-s), e = mu[r][d] - ys[r][d];
        const float sq = e * e * inv_var;
        part += sq + s;
        gm[r][d] = e * inv_var * scale;
        gz[r][d] = (1.f - sq) * (1.f - s * s) * 0.5f * scale;
      }
    total += part;
    for (int r = n; r < R; r++)
      for (int d = 0; d < DY; d++) { gm[r][d] = 0.f; gz[r][d] = 0.f; }
    /* output layers: gw2m[j] += hid[:, j]^T gm, gw2l[j] += hid[:, 8 + j]^T gz, 2 units at a time */
    for (int j0 = 0; j0 < 8; j0 += 2) {
      v16 am[2][NV], al[2][NV];
      UNROLL for (int b = 0; b < 2; b++) UNROLL for (int v = 0; v < NV; v++) {
        am[b][v] = load(gw2m + (j0 + b) * DY + 16 * v);
        al[b][v] = load(gw2l + (j0 + b) * DY + 16 * v);
      }
      for (int r = 0; r < R; r++)
        UNROLL for (int b = 0; b < 2; b++) UNROLL for (int v = 0; v < NV; v++) {
          am[b][v] += splat(hid[r][j0 + b]) * load(gm[r] + 16 * v);
          al[b][v] += splat(hid[r][8 + j0 + b]) * load(gz[r] + 16 * v);
        }
      UNROLL for (int b = 0; b < 2; b++) UNROLL for (int v = 0; v < NV; v++) {
        store(gw2m + (j0 + b) * DY + 16 * v, am[b][v]);
        store(gw2l + (j0 + b) * DY + 16 * v, al[b][v]);
      }
    }
    for (int r = 0; r < R; r++)
      UNROLL for (int v = 0; v < NV; v++) {
        gb2m_acc[v] += load(gm[r] + 16 * v);
        gb2l_acc[v] += load(gz[r] + 16 * v);
      }
    /* hidden gradient [gm w2m^T | gz w2l^T] through the ReLU, 8 rows at a time; it
     * overwrites hid, which is not needed any more */
    for (int r0 = 0; r0 < R; r0 += 8) {
      v8 hm[8], hl[8];
      UNROLL for (int b = 0; b < 8; b++) { hm[b] = (v8){0}; hl[b] = (v8){0}; }
      for (int d = 0; d < DY; d++)
        UNROLL for (int b = 0; b < 8; b++) {
          hm[b] += gm[r0 + b][d] * w2t_m[d];
          hl[b] += gz[r0 + b][d] * w2t_l[d];
        }
      UNROLL for (int b = 0; b < 8; b++) {
        v16 h;
        memcpy(&h, &hm[b], sizeof hm[b]);
        memcpy((float *)&h + 8, &hl[b], sizeof hl[b]);
        h = relu_mask(h, load(hid[r0 + b]));
        gb1_acc += h;
        store(hid[r0 + b], h);
      }
    }
    /* first layers: gw1[k] += x[:, k]^T gh, 8 input columns at a time */
    for (int k0 = 0; k0 < DX; k0 += 8) {
      v16 a[8];
      UNROLL for (int b = 0; b < 8; b++) a[b] = load(gw1 + (k0 + b) * 16);
      for (int r = 0; r < R; r++) {
        const v16 gh = load(hid[r]);
        UNROLL for (int b = 0; b < 8; b++) a[b] += splat(xs[r][k0 + b]) * gh;
      }
      UNROLL for (int b = 0; b < 8; b++) store(gw1 + (k0 + b) * 16, a[b]);
    }
  }
  store(gb1, gb1_acc);
  for (int v = 0; v < NV; v++) {
    store(gb2 + 16 * v, gb2m_acc[v]);
    store(gb2 + DY + 16 * v, gb2l_acc[v]);
  }
  *loss = total * 0.5 * scale;
}

/* steps Adam steps on the packed parameters p (moments m, v; step: steps taken before).
 * Term t fits estimator t, or estimator 0 for every term when shared (then the gradients
 * add up); g is scratch for terms * NUMEL floats. The update is torch.optim.Adam's
 * single-tensor one (weight decay added to the gradient). loss: the terms' summed NLL at
 * the last step, before its update. */
void club_adam_fit(float *p, float *m, float *v, float *g, const float *x, const float *y,
                   int terms, int shared, long rows, int steps, long step, double lr,
                   double beta1, double beta2, double eps, double decay, double *loss) {
  const long n = shared ? NUMEL : (long)terms * NUMEL;
  const float scale = 1.f / (float)rows;
  for (int s = 0; s < steps; s++) {
    double total = 0;
    for (int t = 0; t < terms; t++) {
      double term_loss;
      club_nll_grad(p + (shared ? 0 : t * NUMEL), x + t * rows * DX, y + t * rows * DY, rows,
                    scale, g + t * NUMEL, &term_loss);
      total += term_loss;
    }
    if (shared)
      for (int t = 1; t < terms; t++)
        for (long i = 0; i < NUMEL; i++) g[i] += g[t * NUMEL + i];
    step++;
    const float b1 = (float)(1 - beta1), b2 = (float)beta2, b2c = (float)(1 - beta2);
    const float step_size = (float)(lr / (1 - pow(beta1, (double)step)));
    const float bias2_sqrt = (float)sqrt(1 - pow(beta2, (double)step)), fd = (float)decay;
    const float fe = (float)eps;
    for (long i = 0; i < n; i++) {
      const float gi = g[i] + fd * p[i];
      m[i] += (gi - m[i]) * b1;
      v[i] = v[i] * b2 + b2c * gi * gi;
      p[i] -= step_size * m[i] / (sqrtf(v[i]) / bias2_sqrt + fe);
    }
    *loss = total;
  }
}
