// Tests of the `peft` command-line tool: cli_test <path to peft> <case> <work dir>.
// Each case writes small fixture files with the library's plain file writers (safetensors,
// adapter_config.json, .npy: no injection or merge code), runs the tool, and checks its exit
// code, messages and outputs against independent computations written out here with loops
// (merge: W + s·B·A, DoRA's row-normalised form, VeRA's diag(b)·B·diag(d)·A; apply:
// x·W'ᵀ + b; convert: llama.cpp's alpha/r·B·A and the RoPE row order). Exit status 0 when every
// check passes.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "peft/core/random.hpp"
#include "peft/io/adapter_config.hpp"
#include "peft/io/gguf.hpp"
#include "peft/io/npy.hpp"
#include "peft/io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace peft;

namespace {
std::string g_peft, g_work;
int g_failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++g_failures;
    std::cerr << "FAILED: " << what << '\n';
  }
}

struct result {
  int code = -1;
  std::string out, err;
};
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
result run(const std::vector<std::string>& args) {
  std::string cmd = quote(g_peft);
  for (auto& a : args) {
    cmd += ' ';
    cmd += quote(a);
  }
  const std::string o = g_work + "/stdout.txt", e = g_work + "/stderr.txt";
  cmd += " >";  // appended piece by piece: GCC 12 warns spuriously on chains of operator+
  cmd += quote(o);
  cmd += " 2>";
  cmd += quote(e);
  const int st = std::system(cmd.c_str());
  result r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(o);
  r.err = slurp(e);
  std::string shown;
  for (auto& a : args) shown += " " + a;
  std::cout << "$ peft" << shown << "  -> exit " << r.code << '\n' << r.out << r.err;
  return r;
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
void expect_ok(const result& r, const std::string& what) { check(r.code == 0, what + ": exit code " + std::to_string(r.code)); }
void expect_fail(const result& r, int code, const std::vector<std::string>& parts, const std::string& what) {
  check(r.code == code, what + ": exit code " + std::to_string(r.code) + ", expected " + std::to_string(code));
  for (auto& p : parts) check(contains(r.err, p), what + ": stderr lacks '" + p + "'");
}

std::string path(const std::string& name) { return g_work + "/" + name; }

// ---- fixtures ----

using mat = std::vector<std::vector<double>>;
mat to_mat(const tensor<double>& t) {
  mat m(t.shape()[0], std::vector<double>(t.shape()[1]));
  for (std::size_t i = 0; i < m.size(); ++i)
    for (std::size_t j = 0; j < m[i].size(); ++j) m[i][j] = t(i, j);
  return m;
}
// s·B·A as nested loops.
mat delta(const mat& B, const mat& A, double s) {
  mat d(B.size(), std::vector<double>(A[0].size(), 0.0));
  for (std::size_t i = 0; i < B.size(); ++i)
    for (std::size_t j = 0; j < A[0].size(); ++j) {
      double acc = 0;
      for (std::size_t k = 0; k < A.size(); ++k) acc += B[i][k] * A[k][j];
      d[i][j] = s * acc;
    }
  return d;
}

struct module_spec {
  std::string path;
  std::size_t out, in;
  io::dtype type = io::dtype::F32;
  bool bias = false;
};
const std::vector<module_spec> g_modules{{"model.layers.0.self_attn.q_proj", 8, 6},
                                         {"model.layers.0.self_attn.k_proj", 4, 6},
                                         {"model.layers.0.self_attn.v_proj", 4, 6, io::dtype::F16},
                                         {"model.layers.0.mlp.up_proj", 10, 6, io::dtype::F32, true}};
const std::string pre = "base_model.model.";

// Values as stored (rounded to the file's dtype), read back as double.
std::map<std::string, tensor<double>> write_base(const std::string& file) {
  rng g(11);
  io::safetensors_file f;
  for (auto& m : g_modules) {
    f.add(m.path + ".weight", randn<double>({m.out, m.in}, g, 0, 0.5), m.type);
    if (m.bias) f.add(m.path + ".bias", randn<double>({m.out}, g), io::dtype::F32);
  }
  f.add("model.embed_tokens.weight", randn<float>({16, 6}, g));
  f.add("model.norm.weight", randn<float>({6}, g), io::dtype::BF16);
  f.metadata()["format"] = "pt";
  f.save(file);
  std::map<std::string, tensor<double>> out;
  const auto back = io::safetensors_file::load(file);
  for (auto& n : back.names()) out.emplace(n, back.get<double>(n));
  return out;
}

struct lora_fixture {
  io::adapter_config config;
  std::map<std::string, tensor<double>> tensors;  // as stored (F32), by key
};
// LoRA on every module: r 4 (v_proj: 2 by rank_pattern), alpha 8 (up_proj: 3 by alpha_pattern).
lora_fixture write_lora(const std::string& dir, bool rslora, bool dora, std::uint64_t seed) {
  fs::create_directories(dir);
  lora_fixture fx;
  fx.config = io::adapter_config::lora();
  fx.config.r = 4;
  fx.config.lora_alpha = 8;
  fx.config.use_rslora = rslora;
  fx.config.use_dora = dora;
  fx.config.target_modules = std::vector<std::string>{"q_proj", "k_proj", "v_proj", "up_proj"};
  fx.config.rank_pattern = {{"v_proj", 2}};
  fx.config.alpha_pattern = {{"up_proj", 3}};
  fx.config.save(dir + "/adapter_config.json");
  rng g(seed);
  io::safetensors_file f;
  for (auto& m : g_modules) {
    const std::size_t r = m.path.find("v_proj") != std::string::npos ? 2 : 4;
    f.add(pre + m.path + ".lora_A.weight", randn<float>({r, m.in}, g, 0, 0.4));
    f.add(pre + m.path + ".lora_B.weight", randn<float>({m.out, r}, g, 0, 0.4));
    if (dora) f.add(pre + m.path + ".lora_magnitude_vector", rand_uniform<float>({m.out}, g, 0.5, 2.0));
  }
  f.metadata()["format"] = "pt";
  f.save(dir + "/adapter_model.safetensors");
  for (auto& n : f.names()) fx.tensors.emplace(n, f.get<double>(n));
  return fx;
}
double lora_scale(const lora_fixture& fx, const std::string& path) {
  const double r = path.find("v_proj") != std::string::npos ? 2 : 4;
  const double alpha = path.find("up_proj") != std::string::npos ? 3 : 8;
  return fx.config.use_rslora ? alpha / std::sqrt(r) : alpha / r;
}
// The merged weight [out, in] of a LoRA / DoRA fixture module, computed independently.
mat expected_merged(const lora_fixture& fx, const std::map<std::string, tensor<double>>& base, const module_spec& m) {
  mat W = to_mat(base.at(m.path + ".weight"));
  const mat d = delta(to_mat(fx.tensors.at(pre + m.path + ".lora_B.weight")),
                      to_mat(fx.tensors.at(pre + m.path + ".lora_A.weight")), lora_scale(fx, m.path));
  for (std::size_t i = 0; i < W.size(); ++i)
    for (std::size_t j = 0; j < W[i].size(); ++j) W[i][j] += d[i][j];
  if (fx.config.use_dora) {
    // DoRA (PEFT): m / ‖W + s·B·A‖ per output row, times W + s·B·A.
    const auto& mag = fx.tensors.at(pre + m.path + ".lora_magnitude_vector");
    for (std::size_t i = 0; i < W.size(); ++i) {
      double n2 = 0;
      for (double v : W[i]) n2 += v * v;
      for (double& v : W[i]) v *= mag(i) / std::sqrt(n2);
    }
  }
  return W;
}

double max_rel_err(const tensor<double>& got, const mat& want) {
  double e = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    for (std::size_t j = 0; j < want[i].size(); ++j)
      e = std::max(e, std::abs(got(i, j) - want[i][j]) / std::max(1.0, std::abs(want[i][j])));
  return e;
}
double tolerance(io::dtype t) { return t == io::dtype::F16 ? 1e-3 : 1e-6; }

// ---- cases ----

void case_usage() {
  auto r = run({});
  expect_fail(r, 2, {"peft:"}, "no subcommand");
  r = run({"merge"});
  expect_fail(r, 2, {"peft merge: ", "--base"}, "merge without its required options");
  r = run({"merge", "--base", "a", "--adapter", "b", "--out", "c", "--bogus"});
  expect_fail(r, 2, {"--bogus"}, "unknown flag");
  r = run({"apply", "--base", "b", "--module", "m", "--input", "x", "--output", "y", "--dtype", "f3"});
  expect_fail(r, 2, {"peft apply: ", "f3"}, "bad --dtype");
  r = run({"--help"});
  expect_ok(r, "--help");
  for (const char* c : {"inspect", "merge", "convert", "apply"}) check(contains(r.out, c), std::string("--help lists ") + c);
  r = run({"--version"});
  expect_ok(r, "--version");
  check(contains(r.out, "0.1.0"), "--version prints the version");
  const std::map<std::string, std::vector<std::string>> flags{
      {"inspect", {"path", "recognised by content"}},
      {"merge", {"--base", "--adapter", "--out", "--allow-nonfinite", "atomically"}},
      {"convert", {"input", "output", "--heads", "--kv-heads", "--base", "--alpha", "--type", "--name", "--prefix"}},
      {"apply", {"--base", "--adapter", "--module", "--input", "--output", "--dtype"}}};
  for (auto& [cmd, fl] : flags) {
    r = run({cmd, "--help"});
    expect_ok(r, cmd + " --help");
    for (auto& f : fl) check(contains(r.out, f), cmd + " --help explains " + f);
  }
}

void case_merge(bool dora) {
  const auto base = write_base(path("base.safetensors"));
  for (bool rslora : {false, true}) {
    const std::string dir = path(rslora ? "adapter_rs" : "adapter");
    const auto fx = write_lora(dir, rslora, dora, rslora ? 21 : 22);
    const std::string out = path(rslora ? "merged_rs.safetensors" : "merged.safetensors");
    const auto r = run({"merge", "--base", path("base.safetensors"), "--adapter", dir, "--out", out});
    expect_ok(r, "merge");
    if (r.code != 0) continue;
    const auto merged = io::safetensors_file::load(out);
    const auto orig = io::safetensors_file::load(path("base.safetensors"));
    check(merged.names() == orig.names(), "merge keeps every tensor");
    check(merged.metadata() == orig.metadata(), "merge keeps the metadata");
    for (auto& m : g_modules) {
      const std::string key = m.path + ".weight";
      check(merged.at(key).type == m.type, key + " keeps its dtype");
      const double err = max_rel_err(merged.get<double>(key), expected_merged(fx, base, m));
      check(err <= tolerance(m.type), key + ": merged weight off by " + std::to_string(err) +
                                          (dora ? " (DoRA)" : rslora ? " (rsLoRA)" : " (LoRA)"));
    }
    for (const char* k : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.up_proj.bias"})
      check(merged.at(k).data == orig.at(k).data && merged.at(k).type == orig.at(k).type,
            std::string(k) + " copied unchanged");
  }
}

void case_merge_vera() {
  const auto base = write_base(path("base.safetensors"));
  const std::string dir = path("vera");
  fs::create_directories(dir);
  auto c = io::adapter_config::vera();
  c.r = 3;
  c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
  c.save(dir + "/adapter_config.json");
  rng g(5);
  io::safetensors_file f;
  // Shared projections sized for the largest targeted layer: [r, max_in] and [max_out, r].
  f.add("base_model.vera_A", randn<float>({3, 6}, g));
  f.add("base_model.vera_B", randn<float>({8, 3}, g));
  f.add(pre + "model.layers.0.self_attn.q_proj.vera_lambda_b", randn<float>({8}, g));
  f.add(pre + "model.layers.0.self_attn.q_proj.vera_lambda_d", randn<float>({3}, g));
  f.add(pre + "model.layers.0.self_attn.v_proj.vera_lambda_b", randn<float>({4}, g));
  f.add(pre + "model.layers.0.self_attn.v_proj.vera_lambda_d", randn<float>({3}, g));
  f.save(dir + "/adapter_model.safetensors");
  const auto r = run({"merge", "--base", path("base.safetensors"), "--adapter", dir, "--out", path("merged.safetensors")});
  expect_ok(r, "merge VeRA");
  if (r.code != 0) return;
  const auto merged = io::safetensors_file::load(path("merged.safetensors"));
  const auto A = f.get<double>("base_model.vera_A"), B = f.get<double>("base_model.vera_B");
  for (const char* mod : {"q_proj", "v_proj"}) {
    const std::string p = std::string("model.layers.0.self_attn.") + mod;
    const auto b = f.get<double>(pre + p + ".vera_lambda_b"), d = f.get<double>(pre + p + ".vera_lambda_d");
    mat W = to_mat(base.at(p + ".weight"));
    // W + diag(b)·B[:out, :]·diag(d)·A[:, :in]
    for (std::size_t i = 0; i < W.size(); ++i)
      for (std::size_t j = 0; j < W[i].size(); ++j) {
        double acc = 0;
        for (std::size_t k = 0; k < 3; ++k) acc += B(i, k) * d(k) * A(k, j);
        W[i][j] += b(i) * acc;
      }
    const io::dtype t = merged.at(p + ".weight").type;
    const double err = max_rel_err(merged.get<double>(p + ".weight"), W);
    check(err <= tolerance(t), p + ": VeRA merge off by " + std::to_string(err));
  }
  const auto orig = io::safetensors_file::load(path("base.safetensors"));
  check(merged.at("model.layers.0.self_attn.k_proj.weight").data == orig.at("model.layers.0.self_attn.k_proj.weight").data,
        "k_proj (not targeted) unchanged");
}

void case_apply() {
  const auto base = write_base(path("base.safetensors"));
  const auto fx = write_lora(path("adapter"), false, false, 31);
  const auto fd = write_lora(path("dora"), false, true, 32);
  rng g(3);
  const auto x = randn<double>({2, 3, 6}, g);
  io::save_npy(path("x.npy"), x, io::npy_dtype::f4);
  const auto xs = io::load_npy<double>(path("x.npy"));  // the values as stored
  const module_spec& up = g_modules[3];
  const auto bias = base.at(up.path + ".bias");
  auto expected = [&](const mat& W) {
    std::vector<double> y;
    for (std::size_t n = 0; n < 6; ++n)
      for (std::size_t o = 0; o < up.out; ++o) {
        double acc = bias(o);
        for (std::size_t i = 0; i < up.in; ++i) acc += xs.data()[n * up.in + i] * W[o][i];
        y.push_back(acc);
      }
    return y;
  };
  auto compare = [&](const std::string& file, const std::vector<double>& want, double tol, const std::string& what) {
    const auto h = io::read_npy_header(file);
    check(h.shape == shape_t({2, 3, up.out}), what + ": output shape " + shape_str(h.shape));
    const auto y = io::load_npy<double>(file);
    double e = 0;
    for (std::size_t k = 0; k < want.size() && k < y.size(); ++k)
      e = std::max(e, std::abs(y.data()[k] - want[k]) / std::max(1.0, std::abs(want[k])));
    check(y.size() == want.size() && e <= tol, what + ": off by " + std::to_string(e));
  };
  auto r = run({"apply", "--base", path("base.safetensors"), "--adapter", path("adapter"), "--module", up.path,
                "--input", path("x.npy"), "--output", path("y.npy")});
  expect_ok(r, "apply LoRA");
  if (r.code == 0) {
    check(io::read_npy_header(path("y.npy")).dtype == io::npy_dtype::f4, "apply keeps the input's dtype");
    compare(path("y.npy"), expected(expected_merged(fx, base, up)), 2e-6, "apply LoRA");
  }
  r = run({"apply", "--base", path("base.safetensors"), "--adapter", path("dora"), "--module", up.path, "--input",
           path("x.npy"), "--output", path("yd.npy"), "--dtype", "f8"});
  expect_ok(r, "apply DoRA");
  if (r.code == 0) {
    check(io::read_npy_header(path("yd.npy")).dtype == io::npy_dtype::f8, "apply --dtype f8");
    compare(path("yd.npy"), expected(expected_merged(fd, base, up)), 1e-12, "apply DoRA");
  }
  r = run({"apply", "--base", path("base.safetensors"), "--module", up.path, "--input", path("x.npy"), "--output",
           path("y0.npy"), "--dtype", "f8"});
  expect_ok(r, "apply without adapter");
  if (r.code == 0) compare(path("y0.npy"), expected(to_mat(base.at(up.path + ".weight"))), 1e-12, "apply base only");
}

// RoPE order: GGUF row 2j + s of head h = HF row h·d + s·d/2 + j.
mat permuted(const mat& B, std::size_t heads) {
  const std::size_t d = B.size() / heads;
  mat out = B;
  for (std::size_t h = 0; h < heads; ++h)
    for (std::size_t j = 0; j < d / 2; ++j)
      for (std::size_t s = 0; s < 2; ++s) out[h * d + 2 * j + s] = B[h * d + s * (d / 2) + j];
  return out;
}

void write_llama_lora(const std::string& dir, bool rslora, std::uint64_t seed) {
  fs::create_directories(dir);
  auto c = io::adapter_config::lora();
  c.r = 4;
  c.lora_alpha = 8;
  c.use_rslora = rslora;
  c.target_modules = std::vector<std::string>{"q_proj", "k_proj", "down_proj"};
  if (rslora) c.rank_pattern = {{"k_proj", 2}};
  c.save(dir + "/adapter_config.json");
  rng g(seed);
  io::safetensors_file f;
  const std::size_t rk = rslora ? 2 : 4;
  f.add(pre + "model.layers.0.self_attn.q_proj.lora_A.weight", randn<float>({4, 6}, g));
  f.add(pre + "model.layers.0.self_attn.q_proj.lora_B.weight", randn<float>({8, 4}, g));
  f.add(pre + "model.layers.0.self_attn.k_proj.lora_A.weight", randn<float>({rk, 6}, g));
  f.add(pre + "model.layers.0.self_attn.k_proj.lora_B.weight", randn<float>({4, rk}, g));
  f.add(pre + "model.layers.1.mlp.down_proj.lora_A.weight", randn<float>({4, 10}, g));
  f.add(pre + "model.layers.1.mlp.down_proj.lora_B.weight", randn<float>({6, 4}, g));
  f.metadata()["format"] = "pt";
  f.save(dir + "/adapter_model.safetensors");
}

void case_convert() {
  const std::string dir = path("llama_lora");
  write_llama_lora(dir, false, 41);
  const auto orig = io::safetensors_file::load(dir + "/adapter_model.safetensors");
  auto r = run({"convert", dir, path("a.gguf")});
  expect_fail(r, 1, {"peft convert:", "--heads", dir}, "convert without head counts");
  check(!fs::exists(path("a.gguf")), "no output after a failed convert");
  r = run({"convert", dir, path("a.gguf"), "--heads", "2", "--kv-heads", "1"});
  expect_ok(r, "convert PEFT -> GGUF");
  if (r.code != 0) return;
  const auto g = io::gguf_file::load(path("a.gguf"));
  check(g.get<std::string>("general.type") == "adapter", "general.type adapter");
  check(g.get<std::string>("adapter.type") == "lora", "adapter.type lora");
  check(g.get<float>("adapter.lora.alpha") == 8.0f, "adapter.lora.alpha = 8");
  auto bits_equal = [](const tensor<double>& a, const tensor<double>& b) {
    return shape_of(a) == shape_of(b) && std::equal(a.begin(), a.end(), b.begin());
  };
  auto to_t = [](const mat& m) {
    tensor<double> t = tensor<double>::from_shape({m.size(), m[0].size()});
    for (std::size_t i = 0; i < m.size(); ++i)
      for (std::size_t j = 0; j < m[i].size(); ++j) t(i, j) = m[i][j];
    return t;
  };
  struct expect_t {
    const char* gguf;
    const char* hf;
    std::size_t heads;
  };
  for (auto e : {expect_t{"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj", 2},
                 expect_t{"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj", 1},
                 expect_t{"blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj", 0}}) {
    const auto A = orig.get<double>(pre + e.hf + ".lora_A.weight"), B = orig.get<double>(pre + e.hf + ".lora_B.weight");
    check(g.has_tensor(std::string(e.gguf) + ".lora_a") && g.has_tensor(std::string(e.gguf) + ".lora_b"),
          std::string(e.gguf) + " lora_a / lora_b present");
    if (!g.has_tensor(std::string(e.gguf) + ".lora_b")) continue;
    check(bits_equal(g.get_tensor<double>(std::string(e.gguf) + ".lora_a"), A), std::string(e.gguf) + ".lora_a == A");
    const mat want = e.heads ? permuted(to_mat(B), e.heads) : to_mat(B);
    check(bits_equal(g.get_tensor<double>(std::string(e.gguf) + ".lora_b"), to_t(want)),
          std::string(e.gguf) + ".lora_b == B (rows in GGUF's RoPE order)");
  }
  r = run({"convert", path("a.gguf"), path("back"), "--heads", "2", "--kv-heads", "1", "--prefix", "model."});
  expect_ok(r, "convert GGUF -> PEFT");
  if (r.code != 0) return;
  const auto back = io::safetensors_file::load(path("back/adapter_model.safetensors"));
  check(back.names() == orig.names(), "round trip: same tensor names");
  for (auto& n : orig.names())
    if (back.contains(n)) check(back.at(n).data == orig.at(n).data && back.at(n).shape == orig.at(n).shape, "round trip exact: " + n);
  const auto c = io::adapter_config::load(path("back/adapter_config.json"));
  check(c.r == 4 && c.lora_alpha == 8 && !c.use_rslora && c.rank_pattern.empty(), "round trip: r 4, lora_alpha 8");
}

void case_convert_rslora() {
  const std::string dir = path("rs");
  write_llama_lora(dir, true, 43);
  const auto orig = io::safetensors_file::load(dir + "/adapter_model.safetensors");
  auto r = run({"convert", dir, path("rs.gguf"), "--heads", "2", "--kv-heads", "1", "--type", "f32"});
  expect_ok(r, "convert rsLoRA -> GGUF");
  if (r.code != 0) return;
  const auto g = io::gguf_file::load(path("rs.gguf"));
  const double alpha = g.get<float>("adapter.lora.alpha");
  struct m_t {
    const char* gguf;
    const char* hf;
    double r;
    std::size_t heads;
  };
  const std::vector<m_t> mods{{"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj", 4, 2},
                              {"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj", 2, 1},
                              {"blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj", 4, 0}};
  for (auto& m : mods) {
    // llama.cpp computes alpha_file / r_m · B_file · A; PEFT rsLoRA: 8 / sqrt(r_m) · B · A.
    const mat want = delta(to_mat(orig.get<double>(pre + m.hf + ".lora_B.weight")),
                           to_mat(orig.get<double>(pre + m.hf + ".lora_A.weight")), 8 / std::sqrt(m.r));
    mat got = delta(to_mat(g.get_tensor<double>(std::string(m.gguf) + ".lora_b")),
                    to_mat(g.get_tensor<double>(std::string(m.gguf) + ".lora_a")), alpha / m.r);
    tensor<double> gt = tensor<double>::from_shape({got.size(), got[0].size()});
    const mat wp = m.heads ? permuted(want, m.heads) : want;
    for (std::size_t i = 0; i < got.size(); ++i)
      for (std::size_t j = 0; j < got[i].size(); ++j) gt(i, j) = got[i][j];
    const double err = max_rel_err(gt, wp);
    check(err < 1e-6, std::string(m.gguf) + ": llama.cpp's delta differs from rsLoRA's by " + std::to_string(err));
  }
  r = run({"convert", path("rs.gguf"), path("rs_back"), "--heads", "2", "--kv-heads", "1", "--prefix", "model"});
  expect_ok(r, "convert GGUF -> PEFT (ranks differ)");
  if (r.code != 0) return;
  const auto c = io::adapter_config::load(path("rs_back/adapter_config.json"));
  const auto back = io::safetensors_file::load(path("rs_back/adapter_model.safetensors"));
  check(c.r == 4 && c.rank_pattern.size() == 1, "rank_pattern covers the rank-2 module");
  for (auto& m : mods) {
    const mat want = delta(to_mat(orig.get<double>(pre + m.hf + ".lora_B.weight")),
                           to_mat(orig.get<double>(pre + m.hf + ".lora_A.weight")), 8 / std::sqrt(m.r));
    const mat got = delta(to_mat(back.get<double>(pre + m.hf + ".lora_B.weight")),
                          to_mat(back.get<double>(pre + m.hf + ".lora_A.weight")), c.lora_alpha / m.r);
    tensor<double> gt = tensor<double>::from_shape({got.size(), got[0].size()});
    for (std::size_t i = 0; i < got.size(); ++i)
      for (std::size_t j = 0; j < got[i].size(); ++j) gt(i, j) = got[i][j];
    check(max_rel_err(gt, want) < 1e-6, std::string(m.hf) + ": round-trip delta");
  }
}

void case_inspect() {
  write_base(path("base.safetensors"));
  write_lora(path("adapter"), true, false, 51);
  write_llama_lora(path("llama_lora"), false, 52);
  auto r = run({"inspect", path("adapter")});
  expect_ok(r, "inspect adapter dir");
  for (const char* s : {"rsLoRA", "use_rslora", "true", "rank_pattern", "{\"v_proj\":2}", "alpha_pattern",
                        "{\"up_proj\":3}", "target_modules", "model.layers.0.self_attn.v_proj",
                        "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight", "[10,4]", "F32", "parameters:"})
    check(contains(r.out, s), std::string("inspect adapter shows ") + s);
  // v_proj: r 2, alpha 8, rsLoRA scale 8/sqrt(2); up_proj: alpha 3, scale 3/2.
  check(contains(r.out, "5.656854249"), "inspect shows v_proj's rsLoRA scale 8/sqrt(2)");
  check(contains(r.out, "parameters: 180 trainable"), "inspect counts the parameters (180)");
  r = run({"convert", path("llama_lora"), path("a.gguf"), "--heads", "2", "--kv-heads", "1"});
  expect_ok(r, "convert for inspect");
  r = run({"inspect", path("a.gguf")});
  expect_ok(r, "inspect gguf");
  for (const char* s : {"general.type", "adapter", "adapter.lora.alpha", "8", "blk.0.attn_q.weight.lora_a", "[4,6]",
                        "LoRA modules (3)"})
    check(contains(r.out, s), std::string("inspect gguf shows ") + s);
  r = run({"inspect", path("base.safetensors")});
  expect_ok(r, "inspect safetensors");
  for (const char* s : {"model.embed_tokens.weight", "[16,6]", "BF16", "F16", "format", "pt"})
    check(contains(r.out, s), std::string("inspect safetensors shows ") + s);
  io::save_npy(path("x.npy"), zeros<float>({3, 5}));
  r = run({"inspect", path("x.npy")});
  expect_ok(r, "inspect npy");
  check(contains(r.out, "<f4") && contains(r.out, "[3,5]"), "inspect npy shows dtype and shape");
}

void case_errors() {
  write_base(path("base.safetensors"));
  write_lora(path("adapter"), false, false, 61);
  const std::string out = path("out.safetensors");
  auto r = run({"merge", "--base", path("nope.safetensors"), "--adapter", path("adapter"), "--out", out});
  expect_fail(r, 1, {"peft merge: ", path("nope.safetensors")}, "missing base file");
  // Truncated base.
  const std::string bytes = slurp(path("base.safetensors"));
  std::ofstream(path("cut.safetensors"), std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() / 2));
  r = run({"merge", "--base", path("cut.safetensors"), "--adapter", path("adapter"), "--out", out});
  expect_fail(r, 1, {"peft merge: ", path("cut.safetensors")}, "truncated base");
  // Adapter directory without its config.
  fs::create_directories(path("empty_dir"));
  r = run({"merge", "--base", path("base.safetensors"), "--adapter", path("empty_dir"), "--out", out});
  expect_fail(r, 1, {"peft merge: ", path("empty_dir") + "/adapter_config.json"}, "adapter dir without config");
  // Base without an adapted module's weight, and with another shape.
  {
    auto f = io::safetensors_file::load(path("base.safetensors"));
    f.erase("model.layers.0.self_attn.q_proj.weight");
    f.save(path("no_q.safetensors"));
    f.add("model.layers.0.self_attn.q_proj.weight", zeros<float>({8, 5}));
    f.save(path("bad_q.safetensors"));
  }
  r = run({"merge", "--base", path("no_q.safetensors"), "--adapter", path("adapter"), "--out", out});
  expect_fail(r, 1, {path("no_q.safetensors"), "no tensor 'model.layers.0.self_attn.q_proj.weight'"}, "base lacks q_proj");
  r = run({"merge", "--base", path("bad_q.safetensors"), "--adapter", path("adapter"), "--out", out});
  expect_fail(r, 1, {"peft merge: ", "model.layers.0.self_attn.q_proj.lora_A.weight", "[4,6]", "[4,5]"},
              "base q_proj of another shape");
  check(!fs::exists(out), "no merged file after failed merges");
  // apply: bad input width, a Fortran-order input, a module the adapter does not have.
  io::save_npy(path("x5.npy"), zeros<float>({2, 5}));
  r = run({"apply", "--base", path("base.safetensors"), "--adapter", path("adapter"), "--module",
           "model.layers.0.mlp.up_proj", "--input", path("x5.npy"), "--output", path("y.npy")});
  expect_fail(r, 1, {"peft apply: ", path("x5.npy"), "[2,5]", "[..., 6]"}, "apply: input width");
  {
    std::string h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 6), }";
    h.append(64 - (10 + h.size() + 1) % 64, ' ');
    h += '\n';
    std::string file = std::string("\x93NUMPY\x01\x00", 8) + char(h.size() & 0xff) + char(h.size() >> 8) + h +
                       std::string(48, '\0');
    std::ofstream(path("xf.npy"), std::ios::binary).write(file.data(), std::streamsize(file.size()));
  }
  r = run({"apply", "--base", path("base.safetensors"), "--module", "model.layers.0.mlp.up_proj", "--input",
           path("xf.npy"), "--output", path("y.npy")});
  expect_fail(r, 1, {"peft apply: ", path("xf.npy"), "fortran_order"}, "apply: Fortran-order input");
  io::save_npy(path("x6.npy"), zeros<float>({2, 6}));
  r = run({"apply", "--base", path("base.safetensors"), "--adapter", path("adapter"), "--module", "model.lm_head",
           "--input", path("x6.npy"), "--output", path("y.npy")});
  expect_fail(r, 1, {"peft apply: ", "no adapter for module 'model.lm_head'"}, "apply: module not adapted");
  check(!fs::exists(path("y.npy")), "no output after failed applies");
  // inspect / convert on files that are not what they should be.
  r = run({"inspect", path("missing_thing")});
  expect_fail(r, 1, {"peft inspect: ", path("missing_thing")}, "inspect: missing path");
  r = run({"inspect", path("x6.npy") + "x"});
  expect_fail(r, 1, {"peft inspect: "}, "inspect: missing file");
  std::ofstream(path("junk.bin"), std::ios::binary) << "this is not a tensor file";
  r = run({"inspect", path("junk.bin")});
  expect_fail(r, 1, {"peft inspect: ", path("junk.bin")}, "inspect: junk");
  r = run({"convert", path("junk.bin"), path("o.gguf")});
  expect_fail(r, 1, {"peft convert: ", path("junk.bin")}, "convert: junk input");
  write_lora(path("dora"), false, true, 62);
  r = run({"convert", path("dora"), path("o.gguf")});
  expect_fail(r, 1, {"peft convert: ", "DoRA"}, "convert: DoRA refused");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: cli_test <path to peft> <case> <work dir>\n";
    return 2;
  }
  g_peft = argv[1];
  const std::string c = argv[2];
  g_work = argv[3];
  fs::remove_all(g_work);
  fs::create_directories(g_work);
  try {
    if (c == "usage") case_usage();
    else if (c == "inspect") case_inspect();
    else if (c == "merge") case_merge(false);
    else if (c == "merge_dora") case_merge(true);
    else if (c == "merge_vera") case_merge_vera();
    else if (c == "apply") case_apply();
    else if (c == "convert") case_convert();
    else if (c == "convert_rslora") case_convert_rslora();
    else if (c == "errors") case_errors();
    else {
      std::cerr << "unknown case '" << c << "'\n";
      return 2;
    }
  } catch (const std::exception& e) {
    std::cerr << "FAILED: exception: " << e.what() << '\n';
    return 1;
  }
  if (g_failures) {
    std::cerr << g_failures << " check(s) failed in case '" << c << "'\n";
    return 1;
  }
  std::cout << "case '" << c << "': all checks passed\n";
  return 0;
}
