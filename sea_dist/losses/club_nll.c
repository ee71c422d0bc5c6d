/* The CLUB estimator's negative log-likelihood and its gradient, one term, on the CPU.
 *
 * Built and loaded by sea_dist/losses/native.py (see there for why). club_nll_grad computes
 * what CLUBStack.nll_and_grad computes for one term: two 2-layer MLPs of hidden width 8 (the
 * mean and the tanh log-variance) on x, the Gaussian NLL of y, and the analytic gradient of
 * mean_i NLL_i with respect to every weight. club_adam_fit runs fit_estimator's whole inner
 * loop (that gradient, then torch.optim.Adam's update) for all terms in one call. Shapes are
 * compile-time constants (-DDX=... -DDY=...), so every inner loop has a fixed trip count.
 *
 * The vector width follows the target (16 floats with AVX-512, 8 with AVX, 4 with SSE2) and
 * every register block holds ACC accumulators plus its operands, within the 16 vector
 * registers of AVX2 and SSE2 (AVX-512 has 32: its hidden-gradient block is twice as tall).
 * A block that outgrows the register file spills every accumulator to the stack on each FMA,
 * which is what made a single AVX-512-shaped kernel 10x slower on AVX2.
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

#if defined(__AVX512F__)
#define VW 16
#define ACC_HID 16 /* hidden-gradient accumulators: 32 registers */
#elif defined(__AVX__)
#define VW 8
#define ACC_HID 8
#else
#define VW 4
#define ACC_HID 8
#endif
#define ACC 8 /* accumulators per block: 8 independent FMA chains cover FMA latency */

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int vi __attribute__((vector_size(VW * 4)));
typedef float v8 __attribute__((vector_size(32))); /* one net's 8 hidden units */

#define NUMEL (DX * 16 + 16 + 16 * DY + 2 * DY) /* floats per estimator */
#define H (16 / VW)                             /* vectors per hidden row (both nets) */
#define NV (DY / VW)                            /* vectors per output row */
#define CB (NV < 2 ? NV : 2)                    /* output vectors per block */
#define RB (ACC / 2 / CB)                       /* rows (or hidden units) per output block */
#define RH (ACC / H)                            /* rows per hidden block */
#define KB (ACC / H)                            /* input columns per first-layer block */
#define RG (ACC_HID / (2 * (8 / (VW < 8 ? VW : 8)))) /* rows per hidden-gradient block */
#define R 32 /* rows per tile: a tile's activations stay in L1 */
#define UNROLL _Pragma("GCC unroll 16")

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float s) { return (vf){0} + s; }
/* Polynomials by Chebyshev interpolation (numpy.polynomial.Chebyshev.interpolate), highest
 * degree first: their own error is below the float32 rounding of evaluating them. */
#define HORNER(p, x, c) UNROLL for (unsigned k_ = 1; k_ < sizeof(c) / sizeof(c[0]); k_++) p = p * (x) + c[k_]

/* e^t for |t| <= 1 (a log-variance through tanh), degree 8: error 2.7e-8 relative */
static inline vf exp_unit(vf t) {
  static const float c[] = {2.542872193e-05f, 2.046983349e-04f, 1.388416857e-03f,
                            8.328598904e-03f, 4.166679799e-02f, 1.666679842e-01f,
                            4.999999901e-01f, 9.999999011e-01f, 1.000000000e+00f};
  vf p = splat(c[0]);
  HORNER(p, t, c);
  return p;
}

/* tanh(z) = sign(z) (1 - u) / (1 + u) with u = e^(-2|z|), |z| clamped at 9 (tanh(9) is 1 in
 * float32); u = 2^n e^f with n = trunc(-2|z| / ln 2) and f in (-ln 2, 0] (ln 2 split in two,
 * Cody and Waite), e^f of degree 6 (error 2.5e-9 relative). Absolute error about 1e-7, a
 * rounding at the result's scale. Written out because libmvec's tanhf took a fifth of the
 * fit, and a call per vector keeps neighbouring vectors from overlapping. */
static inline vf tanh_v(vf z) {
  static const float c[] = {9.857852328e-04f, 7.971991434e-03f, 4.150088107e-02f,
                            1.666271004e-01f, 4.999954715e-01f, 9.999998047e-01f,
                            9.999999986e-01f};
  const vi sign = (vi)z & (-0x7fffffff - 1), small = (vf)((vi)z ^ sign) < 9.f;
  const vf a = (vf)(((vi)z ^ sign) & small) + (vf)((vi)splat(9.f) & ~small);
  const vf x = -2.f * a;
  const vi n = __builtin_convertvector(x * 1.44269504088896341f, vi);
  const vf nf = __builtin_convertvector(n, vf);
  const vf f = (x - nf * 0.693145751953125f) - nf * 1.428606765330187e-6f;
  vf p = splat(c[0]);
  HORNER(p, f, c);
  const vf u = (vf)((vi)p + (n << 23)); /* times 2^n, through the exponent bits */
  return (vf)((vi)((1.f - u) / (1.f + u)) | sign);
}
/* v where the ReLU's output c is positive, else 0 */
static inline vf relu_mask(vf v, vf c) { return (vf)((vi)v & (c > 0.f)); }

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
  float xpad[R][DX], ypad[R][DY], hid[R][16], mu[R][DY], z[R][DY], gm[R][DY], gz[R][DY];
  vf gb1_acc[H], gb2m_acc[NV], gb2l_acc[NV];
  for (int h = 0; h < H; h++) gb1_acc[h] = splat(0.f);
  for (int v = 0; v < NV; v++) { gb2m_acc[v] = splat(0.f); gb2l_acc[v] = splat(0.f); }
  double total = 0;
  for (long i0 = 0; i0 < rows; i0 += R) {
    const int n = rows - i0 < R ? (int)(rows - i0) : R;
    /* full tiles are read in place; the last one is copied and padded with zero inputs
     * (and gets zero gradients below) */
    const float(*xs)[DX] = (const float(*)[DX])(x + i0 * DX);
    const float(*ys)[DY] = (const float(*)[DY])(y + i0 * DY);
    if (n < R) {
      memcpy(xpad, xs, sizeof(float) * n * DX);
      memcpy(ypad, ys, sizeof(float) * n * DY);
      memset(xpad[n], 0, sizeof(float) * (R - n) * DX);
      memset(ypad[n], 0, sizeof(float) * (R - n) * DY);
      xs = (const float(*)[DX])xpad;
      ys = (const float(*)[DY])ypad;
    }
    /* hid = relu(x w1 + b1), RH rows at a time */
    for (int r0 = 0; r0 < R; r0 += RH) {
      vf a[RH][H];
      UNROLL for (int b = 0; b < RH; b++) UNROLL for (int h = 0; h < H; h++) a[b][h] = load(b1 + VW * h);
      for (int k = 0; k < DX; k++) {
        vf w[H];
        UNROLL for (int h = 0; h < H; h++) w[h] = load(w1 + k * 16 + VW * h);
        UNROLL for (int b = 0; b < RH; b++) {
          const vf xk = splat(xs[r0 + b][k]);
          UNROLL for (int h = 0; h < H; h++) a[b][h] += xk * w[h];
        }
      }
      UNROLL for (int b = 0; b < RH; b++) UNROLL for (int h = 0; h < H; h++)
        store(hid[r0 + b] + VW * h, relu_mask(a[b][h], a[b][h]));
    }
    /* mu = hid[:, :8] w2m + b2[:DY], z = hid[:, 8:] w2l + b2[DY:], RB rows x CB vectors */
    for (int c0 = 0; c0 < NV; c0 += CB)
      for (int r0 = 0; r0 < R; r0 += RB) {
        vf m[RB][CB], l[RB][CB];
        UNROLL for (int b = 0; b < RB; b++) UNROLL for (int c = 0; c < CB; c++) {
          m[b][c] = load(b2 + VW * (c0 + c));
          l[b][c] = load(b2 + DY + VW * (c0 + c));
        }
        for (int j = 0; j < 8; j++) {
          vf wm[CB], wl[CB];
          UNROLL for (int c = 0; c < CB; c++) {
            wm[c] = load(w2m + j * DY + VW * (c0 + c));
            wl[c] = load(w2l + j * DY + VW * (c0 + c));
          }
          UNROLL for (int b = 0; b < RB; b++) {
            const vf hm = splat(hid[r0 + b][j]), hl = splat(hid[r0 + b][8 + j]);
            UNROLL for (int c = 0; c < CB; c++) { m[b][c] += hm * wm[c]; l[b][c] += hl * wl[c]; }
          }
        }
        UNROLL for (int b = 0; b < RB; b++) UNROLL for (int c = 0; c < CB; c++) {
          store(mu[r0 + b] + VW * (c0 + c), m[b][c]);
          store(z[r0 + b] + VW * (c0 + c), l[b][c]);
        }
      }
    /* With e = mu - y and s = tanh(z): NLL = e^2 e^-s / 2 + s / 2 per coordinate,
     * d/dmu = e e^-s, d/dz = (1 - e^2 e^-s)(1 - s^2) / 2 */
    vf part_v = splat(0.f);
    for (int r = 0; r < n; r++)
      UNROLL for (int v = 0; v < NV; v++) {
        const vf s = tanh_v(load(z[r] + VW * v)), inv_var = exp_unit(-s);
        const vf e = load(mu[r] + VW * v) - load(ys[r] + VW * v), sq = e * e * inv_var;
        part_v += sq + s;
        store(gm[r] + VW * v, e * inv_var * scale);
        store(gz[r] + VW * v, (1.f - sq) * (1.f - s * s) * (0.5f * scale));
      }
    for (int k = 0; k < VW; k++) total += part_v[k];
    for (int r = n; r < R; r++)
      for (int d = 0; d < DY; d++) { gm[r][d] = 0.f; gz[r][d] = 0.f; }
    /* output layers: gw2m[j] += hid[:, j]^T gm, gw2l[j] += hid[:, 8 + j]^T gz, RB units x CB */
    for (int c0 = 0; c0 < NV; c0 += CB)
      for (int j0 = 0; j0 < 8; j0 += RB) {
        vf am[RB][CB], al[RB][CB];
        UNROLL for (int b = 0; b < RB; b++) UNROLL for (int c = 0; c < CB; c++) {
          am[b][c] = load(gw2m + (j0 + b) * DY + VW * (c0 + c));
          al[b][c] = load(gw2l + (j0 + b) * DY + VW * (c0 + c));
        }
        for (int r = 0; r < R; r++) {
          vf em[CB], el[CB];
          UNROLL for (int c = 0; c < CB; c++) {
            em[c] = load(gm[r] + VW * (c0 + c));
            el[c] = load(gz[r] + VW * (c0 + c));
          }
          UNROLL for (int b = 0; b < RB; b++) {
            const vf hm = splat(hid[r][j0 + b]), hl = splat(hid[r][8 + j0 + b]);
            UNROLL for (int c = 0; c < CB; c++) { am[b][c] += hm * em[c]; al[b][c] += hl * el[c]; }
          }
        }
        UNROLL for (int b = 0; b < RB; b++) UNROLL for (int c = 0; c < CB; c++) {
          store(gw2m + (j0 + b) * DY + VW * (c0 + c), am[b][c]);
          store(gw2l + (j0 + b) * DY + VW * (c0 + c), al[b][c]);
        }
      }
    for (int r = 0; r < R; r++)
      UNROLL for (int v = 0; v < NV; v++) {
        gb2m_acc[v] += load(gm[r] + VW * v);
        gb2l_acc[v] += load(gz[r] + VW * v);
      }
    /* hidden gradient [gm w2m^T | gz w2l^T] through the ReLU, RG rows at a time; it
     * overwrites hid, which is not needed any more */
    for (int r0 = 0; r0 < R; r0 += RG) {
      v8 hm[RG], hl[RG];
      UNROLL for (int b = 0; b < RG; b++) { hm[b] = (v8){0}; hl[b] = (v8){0}; }
      for (int d = 0; d < DY; d++)
        UNROLL for (int b = 0; b < RG; b++) {
          hm[b] += gm[r0 + b][d] * w2t_m[d];
          hl[b] += gz[r0 + b][d] * w2t_l[d];
        }
      UNROLL for (int b = 0; b < RG; b++) {
        float both[16];
        memcpy(both, &hm[b], sizeof hm[b]);
        memcpy(both + 8, &hl[b], sizeof hl[b]);
        UNROLL for (int h = 0; h < H; h++) {
          const vf gh = relu_mask(load(both + VW * h), load(hid[r0 + b] + VW * h));
          gb1_acc[h] += gh;
          store(hid[r0 + b] + VW * h, gh);
        }
      }
    }
    /* first layers: gw1[k] += x[:, k]^T gh, KB input columns at a time */
    for (int k0 = 0; k0 < DX; k0 += KB) {
      vf a[KB][H];
      UNROLL for (int b = 0; b < KB; b++) UNROLL for (int h = 0; h < H; h++)
        a[b][h] = load(gw1 + (k0 + b) * 16 + VW * h);
      for (int r = 0; r < R; r++) {
        vf gh[H];
        UNROLL for (int h = 0; h < H; h++) gh[h] = load(hid[r] + VW * h);
        UNROLL for (int b = 0; b < KB; b++) {
          const vf xk = splat(xs[r][k0 + b]);
          UNROLL for (int h = 0; h < H; h++) a[b][h] += xk * gh[h];
        }
      }
      UNROLL for (int b = 0; b < KB; b++) UNROLL for (int h = 0; h < H; h++)
        store(gw1 + (k0 + b) * 16 + VW * h, a[b][h]);
    }
  }
  for (int h = 0; h < H; h++) store(gb1 + VW * h, gb1_acc[h]);
  for (int v = 0; v < NV; v++) {
    store(gb2 + VW * v, gb2m_acc[v]);
    store(gb2 + DY + VW * v, gb2l_acc[v]);
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

/* floats per vector in this build: 16 AVX-512, 8 AVX/AVX2, 4 SSE2 */
int club_vector_width(void) { return VW; }
