// A real OpenID Provider for crm-iam's single sign-on tests, README walkthrough and benchmark:
// node-oidc-provider (OpenID Certified), configured from a JSON file.
//
//   node tests/oidc/provider.mjs <config.json>
//
// config.json: { "port": 0, "clients": [ oidc-provider client metadata… ],
//                "accounts_file": "<path>" }
// The accounts file ({ "<account id>": { claims… } }) is read on every sign-in, so a test changes
// a user's groups or e-mail by rewriting it. Sign-in uses the provider's development interactions
// (any password; consent is granted for the requested scopes). Prints `listening <issuer>` when
// ready. `POST /_test/rotate-keys` replaces the signing keys (a provider's key rotation: the old
// keys are gone at once).
import fs from 'node:fs';
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';
import QuickLRU from 'quick-lru';
// The provider's own in-memory store, larger than its default 1,000 entries (a sign-in stores
// about five: session, interaction, grant, code, …), so a benchmark's burst of prepared sign-ins fits.
import { setStorage } from './node_modules/oidc-provider/lib/adapters/memory_adapter.js';

setStorage(new QuickLRU({ maxSize: 200000 }));

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

function newKeys() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = `k${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  jwk.use = 'sig';
  jwk.alg = 'RS256';
  return { keys: [jwk] };
}

function accounts() {
  return JSON.parse(fs.readFileSync(config.accounts_file, 'utf8'));
}

function build(issuer, jwks) {
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks,
    findAccount(ctx, id) {
      const claims = accounts()[id];
      if (!claims) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['given_name', 'family_name', 'name'],
      phone: ['phone_number', 'phone_number_verified'],
      groups: ['groups'],
      work: ['position', 'department'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'phone', 'groups', 'work'],
    // Scope claims in the ID token (what most enterprise providers do).
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    // First-party clients: consent is implied for what they ask.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope(ctx.oidc.params.scope);
      await grant.save();
      return grant;
    },
    ttl: { AuthorizationCode: 600, Session: 3600, Interaction: 600, Grant: 3600, IdToken: 3600, AccessToken: 600 },
    cookies: { keys: ['crm-iam-test-provider-cookie-key'] },
  });
  // Warnings of development settings are expected here.
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider;
}

let provider;
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/_test/rotate-keys') {
    provider = build(provider.issuer, newKeys());
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ rotated: true }));
    return;
  }
  provider.callback()(req, res);
});

server.listen(config.port || 0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build(issuer, newKeys());
  console.log(`listening ${issuer}`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
