// Package reskey is the context key of the budget reservation a load runs
// under. It imports nothing, so that package budget reads the key
// (budget.FromContext) and package budgetctx sets it (WithReservation)
// without an import cycle.
package reskey

// Key is the context key; its value is a *budget.Reservation.
type Key struct{}
