// Go SDK v2 worker for credvend's conformance suite (tests/compat/main.rs).
//
// Usage: credvendcompat ENDPOINT_URL CALLS
//
// Runs with only the container-credentials variables set, like a sync worker: loads
// the default config (its chain reaches the container-credentials provider), then calls
// sts:GetCallerIdentity CALLS times on one client. Prints one JSON line on success; on
// any failure prints the SDK's own error on stderr and exits 3.
//
// Built in GOPATH mode against Debian's golang-github-aws-aws-sdk-go-v2-dev (see
// scripts/setup-go.sh), so it uses only APIs that SDK release (1.17) has.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(3)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: credvendcompat ENDPOINT_URL CALLS")
		os.Exit(2)
	}
	endpoint := os.Args[1]
	calls, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fail(err)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(endpoint)
	})
	arns := map[string]bool{}
	for i := 0; i < calls; i++ {
		out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			fail(err)
		}
		arns[aws.ToString(out.Arn)] = true
	}
	list := []string{}
	for arn := range arns {
		list = append(list, arn)
	}
	sort.Strings(list)
	out, _ := json.Marshal(map[string]interface{}{
		"arns":          list,
		"aws-sdk-go-v2": aws.SDKVersion,
		"go":            runtime.Version(),
	})
	fmt.Println(string(out))
}
