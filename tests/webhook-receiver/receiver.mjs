// A real webhook receiver for the tests: verifies every delivery with the published
// `standardwebhooks` library (npm, pinned in the repository's package.json), records it, and
// answers as the test scripted. Listens on 127.0.0.1:<free port> and prints one JSON line:
// {"port":N}.
//
// Hooks: POST /hooks/<name> — any name; each name is one endpoint of the test with its own
// secrets and script. A delivery is verified with each secret of its hook separately (a
// rolled secret: both signatures during the grace) and recorded with the outcome.
//
// Control routes (JSON bodies):
//   POST /_hooks/<name>/secrets {"secrets": ["whsec_…", …]}     the secrets to verify with
//   POST /_hooks/<name>/script  {"rules": [rule, …]}             how to answer, replacing the last
//        rule: {"tenant"?: id, "type"?: t, "times"?: n, "answer": answer}; the first rule
//        that matches the delivery (its tenant_id and type) and has times left answers it
//        (times counts down; no times: for ever); no rule: 200.
//        answer: {"status": n} | {"status": n, "delay_ms": ms} (slow) | {"hang": true}
//                (never answers) | {"redirect": url, "status"?: 3xx}
//   POST /_clock {"unix": seconds}  the application's clock: from now on the library checks
//        timestamps against that time (moving on in real time from there), not this machine's
//   GET  /_deliveries[?hook=<name>]  every delivery received, in order of arrival
//   GET  /_health
import { createServer } from 'node:http';
import { Webhook } from 'standardwebhooks';

// The library reads Date.now() for its five-minute tolerance: the tests move the application's
// clock by days, so the receiver keeps an offset to it.
const realNow = Date.now.bind(Date);
let offsetMs = 0;
Date.now = () => realNow() + offsetMs;

const hooks = new Map(); // name -> {secrets: [], rules: []}
const deliveries = [];
let arrival = 0;

function hook(name) {
  if (!hooks.has(name)) hooks.set(name, { secrets: [], rules: [] });
  return hooks.get(name);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function pickAnswer(h, tenant, type) {
  for (const rule of h.rules) {
    if (rule.tenant != null && rule.tenant !== tenant) continue;
    if (rule.type != null && rule.type !== type) continue;
    if (rule.times != null) {
      if (rule.times <= 0) continue;
      rule.times -= 1;
    }
    return rule.answer;
  }
  return { status: 200 };
}

async function receive(name, req, res) {
  const raw = (await readBody(req)).toString('utf8');
  const h = hook(name);
  const headers = {
    'webhook-id': req.headers['webhook-id'] ?? '',
    'webhook-timestamp': req.headers['webhook-timestamp'] ?? '',
    'webhook-signature': req.headers['webhook-signature'] ?? '',
  };
  // Each secret on its own: which of them the signature header verifies with.
  const verifiedWith = [];
  const errors = [];
  h.secrets.forEach((secret, i) => {
    try {
      new Webhook(secret).verify(raw, headers);
      verifiedWith.push(i);
    } catch (e) {
      errors.push(`secret ${i}: ${e.message}`);
    }
  });
  if (h.secrets.length === 0) errors.push('no secret set for this hook');
  let body = null;
  try {
    body = JSON.parse(raw);
  } catch {
    errors.push('the body is not JSON');
  }
  const tenant = body?.tenant_id ?? null;
  const type = body?.type ?? null;
  const answer = pickAnswer(h, tenant, type);
  const record = {
    n: arrival++,
    hook: name,
    id: headers['webhook-id'],
    timestamp: Number.parseInt(headers['webhook-timestamp'], 10),
    signature: headers['webhook-signature'],
    content_type: req.headers['content-type'] ?? null,
    type,
    tenant,
    body,
    raw,
    valid: verifiedWith.length > 0,
    verified_with: verifiedWith,
    errors,
    answer,
    received_at_ms: realNow(),
  };
  deliveries.push(record);
  if (answer.hang) {
    // Never answered: the sender's timeout ends it. The socket is dropped with the process.
    return;
  }
  if (answer.redirect) {
    res.writeHead(answer.status ?? 307, { location: answer.redirect, 'content-length': 0 });
    res.end();
    return;
  }
  if (answer.delay_ms) await new Promise((r) => setTimeout(r, answer.delay_ms));
  json(res, answer.status ?? 200, { received: record.id });
}

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://receiver.invalid');
    const path = url.pathname;
    let m;
    if (req.method === 'POST' && (m = path.match(/^\/hooks\/([A-Za-z0-9_-]+)$/))) {
      await receive(m[1], req, res);
    } else if (req.method === 'POST' && (m = path.match(/^\/_hooks\/([A-Za-z0-9_-]+)\/secrets$/))) {
      const { secrets } = JSON.parse((await readBody(req)).toString('utf8'));
      hook(m[1]).secrets = secrets;
      json(res, 200, { ok: true });
    } else if (req.method === 'POST' && (m = path.match(/^\/_hooks\/([A-Za-z0-9_-]+)\/script$/))) {
      const { rules } = JSON.parse((await readBody(req)).toString('utf8'));
      hook(m[1]).rules = rules;
      json(res, 200, { ok: true });
    } else if (req.method === 'POST' && path === '/_clock') {
      const { unix } = JSON.parse((await readBody(req)).toString('utf8'));
      offsetMs = unix * 1000 - realNow();
      json(res, 200, { ok: true });
    } else if (req.method === 'GET' && path === '/_deliveries') {
      const name = url.searchParams.get('hook');
      json(res, 200, name == null ? deliveries : deliveries.filter((d) => d.hook === name));
    } else if (req.method === 'GET' && path === '/_health') {
      json(res, 200, { ok: true });
    } else {
      json(res, 404, { error: 'no such route' });
    }
  } catch (e) {
    json(res, 500, { error: String(e?.message ?? e) });
  }
});
// A hanging answer must outlast the sender's 10 s: no server-side time limits.
server.requestTimeout = 0;
server.headersTimeout = 0;
server.keepAliveTimeout = 5000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
