// A real OAuth 2.0 / OIDC provider (panva/oidc-provider) on loopback, for Portcullis' token tests.
//
//   node idp.mjs        started by portcullis-testkit's `OidcProvider` (crates/portcullis-testkit/src/idp.rs)
//
// Environment:
//   IDP_PORT      port on 127.0.0.1 (0 = any free one; the ready line names it)
//   IDP_AUDIENCE  the default resource, so the `aud` of tokens asked for without one (default urn:portcullis)
//   IDP_ALG       signing algorithm of the one key it makes at start: RS256 (default), ES256 or EdDSA.
//                 The key (and its random `kid`) is new on every start: a restart is a key rotation.
//   IDP_CLIENTS   JSON array of client-credentials clients:
//                 [{"client_id", "client_secret", "scope": "space separated", "claims": {..}}]
//                 `claims` are added to every access token of that client (team, tier, models...).
//   IDP_RS_CLIENT_ID / IDP_RS_CLIENT_SECRET
//                 the resource server's credentials for RFC 7662 introspection
//                 (default portcullis-rs / portcullis-rs-secret)
//
// Tokens: POST /token (client_secret_basic, grant_type=client_credentials, scope, resource).
// The resource indicator picks the token: `<audience>` gives a signed JWT (`typ: at+jwt`);
// `<audience>?format=opaque` an opaque token, which only introspection can read (the provider
// introspects opaque tokens only); `ttl=<seconds>` in the query sets its lifetime (default 600).
// The audience is always the resource without its query.
//
// Test-only routes under /__test/ (never in a real provider):
//   GET  /__test/stats   {"discovery", "jwks", "token", "introspection", "revocation"}: requests served
//   POST /__test/sign    {"header": {..}, "claims": {..}} -> a compact JWS signed with the provider's
//                        own key (header defaults: its alg, its kid, typ at+jwt), so tests can present
//                        tokens with bad claims that still carry a valid signature.
//
// When listening it prints one line to stdout:
//   {"ready":true,"issuer":"http://127.0.0.1:PORT","port":PORT,"alg":"RS256","kid":"..."}
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const ALGORITHMS = {
  RS256: { type: 'rsa', options: { modulusLength: 2048 }, hash: 'sha256', sign: {} },
  ES256: { type: 'ec', options: { namedCurve: 'P-256' }, hash: 'sha256', sign: { dsaEncoding: 'ieee-p1363' } },
  EdDSA: { type: 'ed25519', options: {}, hash: null, sign: {} },
};
const ROUTES = {
  discovery: '/.well-known/openid-configuration',
  jwks: '/jwks',
  token: '/token',
  introspection: '/token/introspection',
  revocation: '/token/revocation',
};
const DEFAULT_TTL_SECONDS = 600;

const requestedPort = Number(process.env.IDP_PORT ?? 0);
const audience = process.env.IDP_AUDIENCE || 'urn:portcullis';
const algName = process.env.IDP_ALG || 'RS256';
const algorithm = ALGORITHMS[algName];
if (!algorithm) {
  console.error(`IDP_ALG must be one of ${Object.keys(ALGORITHMS).join(', ')}, not ${algName}`);
  process.exit(2);
}
const clients = JSON.parse(process.env.IDP_CLIENTS || '[]');
const resourceServer = {
  client_id: process.env.IDP_RS_CLIENT_ID || 'portcullis-rs',
  client_secret: process.env.IDP_RS_CLIENT_SECRET || 'portcullis-rs-secret',
};

const { privateKey } = crypto.generateKeyPairSync(algorithm.type, algorithm.options);
const kid = `${algName.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
const privateJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: algName, use: 'sig' };

const allScopes = new Set(['openid']);
for (const client of clients) for (const scope of (client.scope || '').split(' ')) if (scope) allScopes.add(scope);
const claimsByClient = new Map(clients.map((client) => [client.client_id, client.claims || {}]));

function parseResource(resource) {
  const [base, query = ''] = resource.split('?', 2);
  const params = new URLSearchParams(query);
  const ttl = Number(params.get('ttl') || DEFAULT_TTL_SECONDS);
  return { audience: base, opaque: params.get('format') === 'opaque', ttl };
}

function issuerFor(port) {
  return `http://127.0.0.1:${port}`;
}

function makeProvider(issuer) {
  return new Provider(issuer, {
    clients: [
      ...clients.map(({ client_id, client_secret, scope }) => ({
        client_id,
        client_secret,
        scope,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      })),
      { ...resourceServer, grant_types: [], redirect_uris: [], response_types: [] },
    ],
    jwks: { keys: [privateJwk] },
    // Every client signs with the one key the provider has.
    clientDefaults: { id_token_signed_response_alg: algName },
    scopes: [...allScopes],
    routes: {
      jwks: ROUTES.jwks,
      token: ROUTES.token,
      introspection: ROUTES.introspection,
      revocation: ROUTES.revocation,
    },
    // The client's own claims, on JWTs and in introspection answers; `sub` too, which an
    // introspection answer for a client-credentials token would otherwise lack.
    extraTokenClaims: (ctx, token) => ({ sub: token.clientId, ...claimsByClient.get(token.clientId) }),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          const wanted = parseResource(resource);
          const info = {
            scope: [...allScopes].join(' '),
            audience: wanted.audience,
            accessTokenTTL: wanted.ttl,
          };
          return wanted.opaque
            ? { ...info, accessTokenFormat: 'opaque' }
            : { ...info, accessTokenFormat: 'jwt', jwt: { sign: { alg: algName } } };
        },
      },
    },
  });
}

const stats = Object.fromEntries(Object.keys(ROUTES).map((name) => [name, 0]));

function count(path) {
  for (const [name, route] of Object.entries(ROUTES)) if (path === route) stats[name] += 1;
}

function base64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

function signCompact(header, claims) {
  const fullHeader = { alg: algName, kid, typ: 'at+jwt', ...header };
  const input = `${base64url(fullHeader)}.${base64url(claims)}`;
  const signature = crypto.sign(algorithm.hash, Buffer.from(input), { key: privateKey, ...algorithm.sign });
  return `${input}.${signature.toString('base64url')}`;
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'));
      } catch (error) {
        reject(error);
      }
    });
    req.on('error', reject);
  });
}

async function testRoute(req, res, path) {
  if (req.method === 'GET' && path === '/__test/stats') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
  } else if (req.method === 'POST' && path === '/__test/sign') {
    const { header = {}, claims = {} } = await readJson(req);
    res.writeHead(200, { 'content-type': 'text/plain' }).end(signCompact(header, claims));
  } else {
    res.writeHead(404).end();
  }
}

const server = http.createServer();
server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = issuerFor(port);
  const provider = makeProvider(issuer);
  provider.on('server_error', (ctx, error) => console.error(`server_error: ${error.stack || error}`));
  const handle = provider.callback();
  server.on('request', (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path.startsWith('/__test/')) {
      testRoute(req, res, path).catch((error) => res.writeHead(400).end(String(error)));
      return;
    }
    count(path);
    handle(req, res);
  });
  console.log(JSON.stringify({ ready: true, issuer, port, alg: algName, kid }));
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
