package bigquery

// FeatureColumns exposes the columns Check requires to the tests.
var FeatureColumns = featureColumns
