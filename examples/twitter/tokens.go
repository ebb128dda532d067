package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/locksmith-go/locksmith/budget"
)

// -tokens N: the app holds N tokens of the API, and the API limits each on
// its own (its -rate and -burst per token), as the X API limits each user
// token and GitHub each installation. A call goes with one token, as
// "Authorization: Bearer TOKEN"; one the API does not know is answered 401.
// The modes with a budget give it the tokens as a pool (budget.Options.Keys):
// every call goes on the token with the most room fleet-wide, and a 429 on
// one pauses that token only. The others, without a budget, take the
// tokens in turn, each server on its own.

// appTokens returns the n tokens of a run with -tokens n.
func appTokens(n int) []string {
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = "app-token-" + strconv.Itoa(i+1)
	}
	return tokens
}

// limitPerToken makes the API limit each of tokens on its own, with a
// bucket of its rate and burst, and answer 401 to any other call; no
// tokens leave it as it is.
func (a *fakeAPI) limitPerToken(tokens []string) {
	if len(tokens) == 0 {
		return
	}
	a.perToken = make(map[string]*tokenBucket, len(tokens))
	a.tokenCalls = make(map[string]int64, len(tokens))
	for _, t := range tokens {
		a.perToken[t] = newTokenBucket(a.bucket.rate, int(a.bucket.burst))
	}
	a.tokens = tokens
	a.conc.perToken = true
}

// bucketFor returns the bucket a call of r spends: the API's own without
// tokens, else that of r's bearer token; ok is false for a token the API
// does not know.
func (a *fakeAPI) bucketFor(r *http.Request) (b *tokenBucket, ok bool) {
	if a.perToken == nil {
		return a.bucket, true
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if b = a.perToken[tok]; b == nil {
		a.denied.Add(1)
		return nil, false
	}
	return b, true
}

// countToken counts r's call as its token's, refused or not, when the API
// knows the token.
func (a *fakeAPI) countToken(r *http.Request) {
	if a.perToken == nil {
		return
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if a.perToken[tok] == nil {
		return
	}
	a.mu.Lock()
	a.tokenCalls[tok]++
	a.mu.Unlock()
}

// byToken returns the calls that came with each token, served or refused,
// in the tokens' order; nil without tokens.
func (a *fakeAPI) byToken() []int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tokens == nil {
		return nil
	}
	n := make([]int64, len(a.tokens))
	for i, t := range a.tokens {
		n[i] = a.tokenCalls[t]
	}
	return n
}

// tokensNote is format, a note of the -tokens in force, with their number;
// "" without -tokens.
func tokensNote(cfg config, format string) string {
	if cfg.tokens == 0 {
		return ""
	}
	return fmt.Sprintf(format, cfg.tokens)
}

// reportTokens writes the API calls of each token of r's mode, if any.
func reportTokens(w io.Writer, r result) {
	if len(r.PerToken) > 0 {
		fmt.Fprintf(w, "%s, API calls per token: %s\n", r.Mode, strings.Trim(fmt.Sprint(r.PerToken), "[]"))
	}
}

// clientTokens are the tokens an API client without a budget takes in
// turn; next, shared by the copies of the client, counts the calls.
type clientTokens struct {
	tokens []string
	next   *atomic.Uint64
}

// token returns the token a call on ctx goes with: its budget
// reservation's key (a load's, with -tokens and a budget), else the next
// of the client's own in turn; "" without tokens.
func (c *apiClient) token(ctx context.Context) string {
	if k := budget.FromContext(ctx).Key(); k != "" {
		return k
	}
	if len(c.own.tokens) == 0 {
		return ""
	}
	return c.own.tokens[(c.own.next.Add(1)-1)%uint64(len(c.own.tokens))]
}
