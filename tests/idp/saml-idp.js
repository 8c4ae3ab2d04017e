'use strict';
// Test-only SAML 2.0 identity provider (samlify) for Quarterdeck's Rust tests; never shipped.
// `node tests/idp/saml-idp.js` listens on 127.0.0.1:<random> and prints {"port":N}. With `--exit-on-stdin-eof`
// it exits when its stdin closes, i.e. when the test process that started it is gone (even if killed).
// Keys under tests/idp/saml/ are test fixtures (see the README there).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const saml = require('samlify');
const xmllint = require('@authenio/samlify-node-xmllint');

saml.setSchemaValidator(xmllint);
const warn = console.warn; // this IdP has no single logout: silence samlify's warning about it
console.warn = (...args) => { if (!String(args[0]).includes('SingleLogoutService')) warn(...args); };
const { Constants, SamlLib, IdentityProvider, ServiceProvider } = saml;
const POST = Constants.namespace.binding.post;
const REDIRECT = Constants.namespace.binding.redirect;
const EMAIL = Constants.namespace.format.emailAddress;
const fixture = (name) => fs.readFileSync(path.join(__dirname, 'saml', name), 'utf8');
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const newId = () => `_${crypto.randomBytes(16).toString('hex')}`;
let base, idp, otherIdp;

const makeIdp = (key, cert) => IdentityProvider({
  entityID: `${base}/metadata`, privateKey: fixture(key), signingCert: fixture(cert), wantAuthnRequestsSigned: false,
  nameIDFormat: [EMAIL], singleSignOnService: [{ Binding: REDIRECT, Location: `${base}/sso` }],
});

async function parseRequest(samlRequest) {
  const anySp = ServiceProvider({ entityID: 'urn:quarterdeck:any-sp' });
  const { extract } = await idp.parseLoginRequest(anySp, 'redirect', { query: { SAMLRequest: samlRequest } });
  const acsUrl = extract.request.assertionConsumerServiceUrl;
  if (!acsUrl || !extract.request.id) throw new Error('the AuthnRequest needs an ID and an AssertionConsumerServiceURL');
  return { id: extract.request.id, acsUrl, spEntityId: extract.issuer };
}

// Renders the samlify default response template; statements are inserted raw (their values escaped here).
function render(template, req, user, variant) {
  const at = (minutes) => new Date(Date.now() + minutes * 60000).toISOString();
  const past = variant === 'expired';
  const attr = (n, v) => `<saml:Attribute Name="${n}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic">`
    + `<saml:AttributeValue xsi:type="xs:string">${esc(v)}</saml:AttributeValue></saml:Attribute>`;
  const authn = `<saml:AuthnStatement AuthnInstant="${at(past ? -20 : 0)}" SessionIndex="${newId()}"><saml:AuthnContext>`
    + '<saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport'
    + '</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>';
  const inResponseTo = variant === 'wrong_in_response_to' ? newId() : req.id;
  const xml = SamlLib.replaceTagsByValue(template, {
    ID: newId(), AssertionID: newId(), Destination: req.acsUrl, Issuer: `${base}/metadata`,
    IssueInstant: at(past ? -20 : 0), InResponseTo: inResponseTo, StatusCode: Constants.StatusCode.Success,
    Audience: variant === 'wrong_audience' ? 'https://wrong-audience.example.test/' : req.spEntityId,
    SubjectRecipient: variant === 'wrong_recipient' ? 'https://wrong-recipient.example.test/acs' : req.acsUrl,
    ConditionsNotBefore: at(past ? -20 : 0), ConditionsNotOnOrAfter: at(past ? -10 : 5),
    SubjectConfirmationDataNotOnOrAfter: at(past ? -10 : 5), NameIDFormat: EMAIL, NameID: user.nameId,
  });
  return xml.replace('{AuthnStatement}', () => authn)
    .replace('{AttributeStatement}', () => `<saml:AttributeStatement>${attr('email', user.email)}${attr('name', user.name)}</saml:AttributeStatement>`);
}

async function buildResponse(req, user, variant) {
  if (variant === 'comment_injection') user = { ...user, email: `${user.email}.evil.test`, nameId: `${user.nameId}.evil.test` };
  const sp = ServiceProvider({
    entityID: req.spEntityId,
    wantAssertionsSigned: variant !== 'response_signed',
    wantMessageSigned: variant === 'both_signed',
    assertionConsumerService: [{ Binding: POST, Location: req.acsUrl }],
  });
  const template = SamlLib.defaultLoginResponseTemplate.context;
  if (variant === 'unsigned') return Buffer.from(render(template, req, user, variant)).toString('base64');
  const signer = variant === 'other_signer' ? otherIdp : idp;
  const { context } = await signer.createLoginResponse(sp, { extract: { request: { id: req.id } } }, 'post', {}, {
    customTagReplacement: (t) => ({ id: '', context: render(t, req, user, variant) }),
  });
  let xml = Buffer.from(context, 'base64').toString('utf8');
  if (variant === 'tampered') xml = xml.split(`>${esc(user.email)}<`).join('>mallory@evil.test<');
  if (variant === 'wrapped') {
    // Signature wrapping: an unsigned attacker assertion placed first; the signed honest one stays after it.
    const signed = xml.slice(xml.indexOf('<saml:Assertion'), xml.indexOf('</saml:Assertion>') + 17);
    const injected = signed.replace(/<ds:Signature[\s\S]*<\/ds:Signature>/, '').replace(/ID="[^"]+"/, `ID="${newId()}"`)
      .split(`>${esc(user.email)}<`).join(`>${esc(user.attackerEmail)}<`);
    xml = xml.replace('<saml:Assertion', () => `${injected}<saml:Assertion`);
  }
  if (variant === 'comment_injection') {
    // Inserted after signing: exclusive c14n drops comments, so the signature still verifies.
    const nameId = `>${esc(user.nameId)}</saml:NameID>`;
    xml = xml.replace(nameId, `>${esc(user.nameId.slice(0, -10))}<!---->.evil.test</saml:NameID>`);
  }
  return Buffer.from(xml).toString('base64');
}

async function respond(samlRequest, relayState, body, variant) {
  const req = await parseRequest(samlRequest);
  const user = { email: body.email, name: body.name, nameId: body.name_id || body.email, attackerEmail: body.attacker_email || 'attacker@evil.test' };
  return { acs_url: req.acsUrl, saml_response: await buildResponse(req, user, variant), relay_state: relayState };
}

const readBody = (r) => new Promise((ok, fail) => { let b = ''; r.on('data', (c) => { b += c; }); r.on('end', () => ok(b)); r.on('error', fail); });
const hidden = (n, v) => `<input type="hidden" name="${n}" value="${esc(v ?? '')}">`;
const page = (body) => `<!doctype html><html><head><meta charset="utf-8"><title>Test IdP</title></head><body>${body}</body></html>`;

const server = http.createServer(async (r, w) => {
  const send = (status, type, body) => { w.writeHead(status, { 'content-type': type }); w.end(body); };
  try {
    const u = new URL(r.url, base);
    if (r.method === 'GET' && u.pathname === '/metadata') return send(200, 'application/samlmetadata+xml', idp.getMetadata());
    if (r.method === 'GET' && u.pathname === '/sso') {
      return send(200, 'text/html', page(`<h1>Test IdP sign-in</h1><form method="post" action="/sso/login">`
        + `${hidden('SAMLRequest', u.searchParams.get('SAMLRequest'))}${hidden('RelayState', u.searchParams.get('RelayState'))}`
        + '<label>Email <input id="email" name="email" type="email" required></label>'
        + '<label>Name <input id="name" name="name"></label><button id="sign-in" type="submit">Sign in</button></form>'));
    }
    if (r.method === 'POST' && u.pathname === '/sso/login') {
      const f = new URLSearchParams(await readBody(r));
      const out = await respond(f.get('SAMLRequest'), f.get('RelayState') ?? '', { email: f.get('email'), name: f.get('name') ?? '' }, 'ok');
      return send(200, 'text/html', page(`<form id="saml" method="post" action="${esc(out.acs_url)}">`
        + `${hidden('SAMLResponse', out.saml_response)}${hidden('RelayState', out.relay_state)}</form>`
        + '<script>document.getElementById("saml").submit()</script>'));
    }
    if (r.method === 'POST' && u.pathname === '/respond') {
      const b = JSON.parse(await readBody(r));
      return send(200, 'application/json', JSON.stringify(await respond(b.saml_request, b.relay_state ?? '', b, b.variant ?? 'ok')));
    }
    return send(404, 'text/plain', 'not found');
  } catch (e) {
    return send(400, 'text/plain', `saml-idp: ${e && e.message ? e.message : e}`);
  }
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  base = `http://127.0.0.1:${port}`;
  idp = makeIdp('idp-key.pem', 'idp-cert.pem');
  otherIdp = makeIdp('other-idp-key.pem', 'other-idp-cert.pem');
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  process.stdout.on('error', () => {}); // the reader may stop after the port line; node-xmllint logs to stdout
});
if (process.argv.includes('--exit-on-stdin-eof')) process.stdin.on('end', () => process.exit(0)).resume();
