// Cache-free generation loop (full forward per token), greedy or temperature/top-k sampling.
#include "infer/naive_generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/rng.h"
#include "model/model.h"

namespace mtp {

void generate_naive(const model_config& c, const model_layout& L, const float* W, std::vector<int>& tokens, int n_new,
                    float temperature, int top_k, uint64_t seed, int max_ctx, int stop_id, arena& a) {
    rng r(seed);
    model_state s;
    const int V = c.vocab_size;
    std::vector<int> order(V);
    for (int i = 0; i < n_new && !tokens.empty(); ++i) {
        const int n = std::min<int>(int(tokens.size()), max_ctx);
        a.reset();
        model_forward(c, L, W, s, tokens.data() + tokens.size() - n, n, 0.0f, a, nullptr, 0);
        const float* l = s.logits + size_t(n - 1) * V;
        int next = 0;
        if (temperature <= 0) {
            next = int(std::max_element(l, l + V) - l);
        } else {
            std::iota(order.begin(), order.end(), 0);
            int k = top_k > 0 && top_k < V ? top_k : V;
            std::partial_sort(order.begin(), order.begin() + k, order.end(),
                              [&](int x, int y) { return l[x] > l[y] || (l[x] == l[y] && x < y); });
            double mx = l[order[0]], sum = 0;
            std::vector<double> p(k);
            for (int j = 0; j < k; ++j) sum += p[j] = std::exp((l[order[j]] - mx) / temperature);
            double u = r.uniform() * sum;
            next = order[k - 1];
            for (int j = 0; j < k; ++j) {
                if (u < p[j]) { next = order[j]; break; }
                u -= p[j];
            }
        }
        tokens.push_back(next);
        if (next == stop_id) break;
    }
}

} // namespace mtp
