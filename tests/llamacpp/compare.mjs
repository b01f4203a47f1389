// Loads the GGUF files written by export_llama into llama.cpp (node-llama-cpp, CPU prebuilt
// binary), evaluates the same token sequence with and without each LoRA adapter, and compares
// llama.cpp's next-token probabilities at every position with ours (expected.json).
// Usage: node compare.mjs --dir <export dir> --modules <node_modules dir> [--tol 2e-3]
// Exit code 0 when every case is within tolerance, 1 otherwise, 2 on a usage or load error.
import fs from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";

function arg(name, def) {
    const i = process.argv.indexOf(name);
    return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const dir = arg("--dir");
const modules = arg("--modules");
const tol = Number(arg("--tol", "2e-3"));
if (!dir || !modules) {
    console.error("usage: node compare.mjs --dir <export dir> --modules <node_modules dir> [--tol 2e-3]");
    process.exit(2);
}

const entry = path.join(modules, "node-llama-cpp", "dist", "index.js");
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(entry).href);
const expected = JSON.parse(fs.readFileSync(path.join(dir, "expected.json"), "utf8"));
const tokens = expected.tokens;

// Prebuilt CPU binary only: never build, never download.
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.warn, progressLogs: false});
console.log(`llama.cpp ${llama.llamaCppRelease.release} (${llama.buildType}, gpu=${llama.gpu})`);
const model = await llama.loadModel({modelPath: path.join(dir, "base.gguf"), gpuLayers: 0});

async function evaluate(loraFile) {
    const context = await model.createContext({
        contextSize: 256,
        batchSize: 256,
        sequences: 1,
        threads: 1,
        flashAttention: false,
        // An F32 KV cache keeps llama.cpp's rounding at float level (the default is F16).
        experimentalKvCacheKeyType: "F32",
        experimentalKvCacheValueType: "F32",
        lora: loraFile ? {adapters: [{filePath: path.join(dir, loraFile), scale: 1}]} : undefined
    });
    try {
        const seq = context.getSequence();
        // Greedy sampling (temperature 0) leaves the candidate list untouched, so the reported
        // probabilities are the softmax of the raw logits over the whole vocabulary.
        const input = tokens.map((t) => [t, {generateNext: {probabilities: true, options: {temperature: 0}}}]);
        const out = await seq.controlledEvaluate(input);
        return out.map((o, i) => {
            if (!o?.next?.probabilities) throw new Error(`no probabilities at position ${i}`);
            const p = new Float64Array(model.tokens.size ?? 256);
            for (const [tok, prob] of o.next.probabilities) p[tok] = prob;
            return p;
        });
    } finally {
        await context.dispose();
    }
}

function maxAbsDiff(a, b) {
    let m = 0;
    for (let i = 0; i < a.length; ++i)
        for (let v = 0; v < a[i].length; ++v) m = Math.max(m, Math.abs(a[i][v] - b[i][v]));
    return m;
}

let passed = 0, failed = 0;
{
    // The byte-level vocabulary: llama.cpp's tokenizer must map the text to its bytes and back.
    const ids = Array.from(model.tokenize(expected.text, false));
    const back = model.detokenize(ids);
    const ok = JSON.stringify(ids) === JSON.stringify(tokens) && back === expected.text;
    console.log(`${ok ? "PASS" : "FAIL"} tokenizer: ${JSON.stringify(expected.text)} -> ${ids.length} ids` +
                `${ok ? " = its bytes, and back" : ` ${JSON.stringify(ids)} -> ${JSON.stringify(back)}`}`);
    ok ? ++passed : ++failed;
}
const ours = {};
for (const c of expected.cases) {
    ours[c.name] = c.probs;
    const theirs = await evaluate(c.lora);
    const d = maxAbsDiff(theirs, c.probs);
    const peak = Math.max(...c.probs.map((row) => Math.max(...row)));
    const ok = d <= tol;
    console.log(`${ok ? "PASS" : "FAIL"} ${c.name}${c.lora ? " (+" + c.lora + ")" : ""}: max |p_llama.cpp - p_peft| = ` +
                `${d.toExponential(3)} over ${tokens.length} positions x ${c.probs[0].length} tokens ` +
                `(tolerance ${tol}, largest probability ${peak.toFixed(3)})`);
    ok ? ++passed : ++failed;
}
// The adapters must matter: otherwise a silently ignored LoRA would pass.
for (const c of expected.cases.filter((c) => c.lora)) {
    const d = maxAbsDiff(ours[c.name], ours.base);
    const ok = d > 50 * tol;
    console.log(`${ok ? "PASS" : "FAIL"} ${c.name} changes the distribution: max |p_lora - p_base| = ${d.toExponential(3)}`);
    ok ? ++passed : ++failed;
}
await model.dispose();
await llama.dispose();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
