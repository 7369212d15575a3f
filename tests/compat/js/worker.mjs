// JavaScript SDK v3 worker for credvend's conformance suite (tests/compat/main.rs).
//
// Usage: node worker.mjs PROVIDER ENDPOINT_URL REGION CALLS
//   PROVIDER: "default"               the client's default chain (credential-provider-node)
//             "fromHttp"              @aws-sdk/credential-providers fromHttp()
//             "fromContainerMetadata" @aws-sdk/credential-providers fromContainerMetadata()
//
// Runs with only the container-credentials variables set, like a sync worker: calls
// sts:GetCallerIdentity CALLS times on one client. Prints one JSON line on success; on
// any failure prints the SDK's own error on stderr and exits 3.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { fromContainerMetadata, fromHttp } from "@aws-sdk/credential-providers";

const [provider, endpoint, region, calls] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const versionOf = (name) => {
  const manifest = require.resolve(`${name}/package.json`);
  return JSON.parse(readFileSync(manifest, "utf8")).version;
};

// undefined: let the client build its default chain.
const providers = {
  default: undefined,
  fromHttp: () => fromHttp(),
  fromContainerMetadata: () => fromContainerMetadata(),
};
if (!Object.hasOwn(providers, provider)) {
  console.error(`unknown provider ${provider}`);
  process.exit(2);
}
const credentials = providers[provider];

try {
  const client = new STSClient({
    region,
    endpoint,
    ...(credentials ? { credentials: credentials() } : {}),
  });
  const arns = new Set();
  for (let i = 0; i < Number(calls); i++) {
    const identity = await client.send(new GetCallerIdentityCommand({}));
    arns.add(identity.Arn);
  }
  console.log(
    JSON.stringify({
      arns: [...arns].sort(),
      "client-sts": versionOf("@aws-sdk/client-sts"),
      "credential-providers": versionOf("@aws-sdk/credential-providers"),
      node: process.version,
    }),
  );
} catch (error) {
  console.error(`${error?.name}: ${error?.message}`);
  process.exit(3);
}
