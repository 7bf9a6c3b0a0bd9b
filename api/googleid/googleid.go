// Package googleid verifies Google-signed ID tokens for the API with
// Google's own validator (google.golang.org/api/idtoken: signature against
// Google's published keys, expiry, audience) and hands the API only the
// claims it checks itself (issuer, email, email_verified).
package googleid

import (
	"context"
	"fmt"

	"google.golang.org/api/idtoken"
	"google.golang.org/api/option"

	"github.com/predworker/predworker/api"
)

// Verifier implements api.TokenVerifier.
type Verifier struct{ v *idtoken.Validator }

var _ api.TokenVerifier = (*Verifier)(nil)

// New returns a verifier; opts reach the validator's HTTP client (tests
// point it at a local key server).
func New(ctx context.Context, opts ...option.ClientOption) (*Verifier, error) {
	v, err := idtoken.NewValidator(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("ID token validator: %w", err)
	}
	return &Verifier{v: v}, nil
}

// Verify implements api.TokenVerifier.
func (g *Verifier) Verify(ctx context.Context, token, audience string) (api.Claims, error) {
	p, err := g.v.Validate(ctx, token, audience)
	if err != nil {
		return api.Claims{}, fmt.Errorf("validate ID token: %w", err)
	}
	email, _ := p.Claims["email"].(string)
	verified, _ := p.Claims["email_verified"].(bool)
	return api.Claims{Issuer: p.Issuer, Email: email, EmailVerified: verified}, nil
}
