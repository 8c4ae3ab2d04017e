// A real OpenID provider for the tests (oidc-provider, development interactions).
// Env: CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS (comma-separated). Listens on 127.0.0.1:<free port>
// and prints one JSON line: {"issuer":"http://127.0.0.1:N"}.
// Sign-in: any login and password are accepted. The login is the email (lower-cased), except
// that `unverified.<email>` signs in as <email> with email_verified=false (a distinct account).
// `sub` is "acct-" + the first 24 hex digits of sha256(login lower-cased): stable, not the email.
// `name` is the email's local part. Consent is granted automatically (openid email profile).
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const { CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS } = process.env;
if (!CLIENT_ID || !CLIENT_SECRET || !REDIRECT_URIS) throw new Error('CLIENT_ID, CLIENT_SECRET and REDIRECT_URIS are required');

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS.split(',').map((uri) => uri.trim()).filter(Boolean),
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
    // Pairwise only so that `sub` can be derived from the login (oidc-provider sets sub = the
    // account id, which the dev interactions make the login as typed). Never fetched.
    subject_type: 'pairwise',
    sector_identifier_uri: 'https://quarterdeck.test/sector.json',
  }],
  subjectTypes: ['public', 'pairwise'],
  sectorIdentifierUriValidate: () => false,
  pairwiseIdentifier: async (ctx, accountId) => `acct-${createHash('sha256').update(accountId.toLowerCase()).digest('hex').slice(0, 24)}`,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  responseTypes: ['code'],
  pkce: { required: () => true, methods: ['S256'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: true } },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
  async findAccount(ctx, accountId) {
    const login = accountId.trim().toLowerCase();
    const unverified = login.startsWith('unverified.');
    const email = unverified ? login.slice('unverified.'.length) : login;
    return {
      accountId,
      claims: async () => ({ sub: accountId, email, email_verified: !unverified, name: email.split('@')[0] }),
    };
  },
  // No consent screen: a grant for what is asked (openid email profile) is made on the spot.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
});

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
