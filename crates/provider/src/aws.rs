//! The provider's operations on AWS through the SDK clients. Endpoints come from the standard
//! configuration (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`).

use aws_sdk_budgets as budgets;
use aws_sdk_cloudwatch as cloudwatch;
use budgets::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::handler::{AlarmOps, BudgetOps};
use crate::plan::{AlarmPlan, BudgetPlan, MetricStat, NAMESPACE};

/// CloudWatch through aws-sdk-cloudwatch.
pub struct CloudWatchAlarms {
    /// The client.
    pub client: cloudwatch::Client,
}

fn dimensions(m: &MetricStat) -> Vec<cloudwatch::types::Dimension> {
    m.dimensions
        .iter()
        .map(|(k, v)| {
            cloudwatch::types::Dimension::builder()
                .name(k)
                .value(v)
                .build()
        })
        .collect()
}

fn metric_stat(m: &MetricStat) -> cloudwatch::types::MetricStat {
    let metric = cloudwatch::types::Metric::builder()
        .namespace(NAMESPACE)
        .metric_name(&m.metric_name)
        .set_dimensions(Some(dimensions(m)))
        .build();
    cloudwatch::types::MetricStat::builder()
        .metric(metric)
        .period(m.period)
        .stat(&m.stat)
        .build()
}

impl AlarmOps for CloudWatchAlarms {
    async fn put_alarm(&self, plan: &AlarmPlan) -> Result<String, String> {
        let mut req = self
            .client
            .put_metric_alarm()
            .alarm_name(&plan.name)
            .alarm_description(&plan.description)
            .comparison_operator(cloudwatch::types::ComparisonOperator::from(plan.comparison))
            .evaluation_periods(plan.evaluation_periods)
            .datapoints_to_alarm(plan.datapoints_to_alarm)
            .treat_missing_data(plan.treat_missing_data)
            .actions_enabled(true)
            .set_alarm_actions(Some(plan.actions.clone()))
            .set_threshold(plan.threshold)
            .set_threshold_metric_id(plan.threshold_metric_id.clone());
        if let Some(m) = &plan.metric {
            req = req
                .namespace(NAMESPACE)
                .metric_name(&m.metric_name)
                .set_dimensions(Some(dimensions(m)))
                .statistic(cloudwatch::types::Statistic::from(m.stat.as_str()))
                .period(m.period);
        }
        for q in &plan.queries {
            req = req.metrics(
                cloudwatch::types::MetricDataQuery::builder()
                    .id(&q.id)
                    .set_expression(q.expression.clone())
                    .set_metric_stat(q.metric.as_ref().map(metric_stat))
                    .set_label(q.label.clone())
                    .return_data(q.return_data)
                    .build(),
            );
        }
        req.send()
            .await
            .map_err(|e| cloudwatch::error::DisplayErrorContext(&e).to_string())?;
        let described = self
            .client
            .describe_alarms()
            .alarm_names(&plan.name)
            .send()
            .await
            .map_err(|e| cloudwatch::error::DisplayErrorContext(&e).to_string())?;
        described
            .metric_alarms()
            .iter()
            .find_map(|a| a.alarm_arn().map(str::to_string))
            .ok_or_else(|| format!("alarm `{}` was put but is not described", plan.name))
    }

    async fn delete_alarm(&self, name: &str) -> Result<(), String> {
        // DeleteAlarms succeeds for names that do not exist.
        self.client
            .delete_alarms()
            .alarm_names(name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| cloudwatch::error::DisplayErrorContext(&e).to_string())
    }
}

/// AWS Budgets through aws-sdk-budgets.
pub struct AwsBudgets {
    /// The client.
    pub client: budgets::Client,
}

fn budget_of(plan: &BudgetPlan) -> Result<budgets::types::Budget, String> {
    budgets::types::Budget::builder()
        .budget_name(&plan.name)
        .budget_limit(
            budgets::types::Spend::builder()
                .amount(&plan.limit_usd)
                .unit("USD")
                .build()
                .map_err(|e| e.to_string())?,
        )
        .filter_expression(
            budgets::types::Expression::builder()
                .and(
                    budgets::types::Expression::builder()
                        .dimensions(
                            budgets::types::ExpressionDimensionValues::builder()
                                .key(budgets::types::Dimension::Service)
                                .values(&plan.service)
                                .build()
                                .map_err(|e| e.to_string())?,
                        )
                        .build(),
                )
                .and(
                    budgets::types::Expression::builder()
                        .tags(
                            budgets::types::TagValues::builder()
                                .key(&plan.tag.0)
                                .values(&plan.tag.1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .time_unit(budgets::types::TimeUnit::Monthly)
        .budget_type(budgets::types::BudgetType::Cost)
        .build()
        .map_err(|e| e.to_string())
}

fn notification(kind: &str, percent: u32) -> Result<budgets::types::Notification, String> {
    budgets::types::Notification::builder()
        .notification_type(budgets::types::NotificationType::from(kind))
        .comparison_operator(budgets::types::ComparisonOperator::GreaterThan)
        .threshold(f64::from(percent))
        .threshold_type(budgets::types::ThresholdType::Percentage)
        .build()
        .map_err(|e| e.to_string())
}

fn subscribers(plan: &BudgetPlan) -> Result<Vec<budgets::types::Subscriber>, String> {
    let mut out = Vec::new();
    if let Some(topic) = &plan.topic_arn {
        out.push(
            budgets::types::Subscriber::builder()
                .subscription_type(budgets::types::SubscriptionType::Sns)
                .address(topic)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    for email in &plan.emails {
        out.push(
            budgets::types::Subscriber::builder()
                .subscription_type(budgets::types::SubscriptionType::Email)
                .address(email)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

impl BudgetOps for AwsBudgets {
    async fn upsert(
        &self,
        account_id: &str,
        plan: &BudgetPlan,
        previous: Option<&BudgetPlan>,
    ) -> Result<(), String> {
        let budget = budget_of(plan)?;
        let subs = subscribers(plan)?;
        let exists = match self
            .client
            .describe_budget()
            .account_id(account_id)
            .budget_name(&plan.name)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(DisplayErrorContext(&e).to_string()),
        };
        if !exists {
            let mut req = self
                .client
                .create_budget()
                .account_id(account_id)
                .budget(budget);
            if !subs.is_empty() {
                for (kind, percent) in &plan.notifications {
                    req = req.notifications_with_subscribers(
                        budgets::types::NotificationWithSubscribers::builder()
                            .notification(notification(kind, *percent)?)
                            .set_subscribers(Some(subs.clone()))
                            .build()
                            .map_err(|e| e.to_string())?,
                    );
                }
            }
            return req
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DisplayErrorContext(&e).to_string());
        }
        self.client
            .update_budget()
            .account_id(account_id)
            .new_budget(budget)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        // Reconcile notifications: drop those no longer wanted, add the missing ones.
        let current = self
            .client
            .describe_notifications_for_budget()
            .account_id(account_id)
            .budget_name(&plan.name)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        let wanted: Vec<budgets::types::Notification> = plan
            .notifications
            .iter()
            .map(|(k, p)| notification(k, *p))
            .collect::<Result<_, _>>()?;
        let same = |a: &budgets::types::Notification, b: &budgets::types::Notification| {
            a.notification_type() == b.notification_type()
                && a.threshold() == b.threshold()
                && a.comparison_operator() == b.comparison_operator()
        };
        // A notification's subscribers change by replacing it: Budgets' subscriber calls would
        // do it one address at a time, and the notification's history is only its threshold.
        let resubscribe = previous.is_none_or(|p| {
            let set = |p: &BudgetPlan| {
                let mut s: Vec<String> = p.emails.clone();
                s.extend(p.topic_arn.iter().map(|t| format!("sns:{t}")));
                s.sort();
                s
            };
            set(p) != set(plan)
        });
        for existing in current.notifications() {
            if resubscribe || !wanted.iter().any(|w| same(w, existing)) {
                self.client
                    .delete_notification()
                    .account_id(account_id)
                    .budget_name(&plan.name)
                    .notification(existing.clone())
                    .send()
                    .await
                    .map_err(|e| DisplayErrorContext(&e).to_string())?;
            }
        }
        if !subs.is_empty() {
            for w in &wanted {
                if resubscribe || !current.notifications().iter().any(|e| same(w, e)) {
                    self.client
                        .create_notification()
                        .account_id(account_id)
                        .budget_name(&plan.name)
                        .notification(w.clone())
                        .set_subscribers(Some(subs.clone()))
                        .send()
                        .await
                        .map_err(|e| DisplayErrorContext(&e).to_string())?;
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, account_id: &str, name: &str) -> Result<(), String> {
        match self
            .client
            .delete_budget()
            .account_id(account_id)
            .budget_name(name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_not_found_exception() || s.code() == Some("NotFoundException")
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(DisplayErrorContext(&e).to_string()),
        }
    }
}
